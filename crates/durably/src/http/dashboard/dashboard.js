// durably dashboard: vanilla JavaScript over the HTTP API (no build step, no dependencies).
// Runs: GET /runs (+ live GET /runs/subscribe); a run: GET /run, /steps, /logs (+ live
// GET /subscribe), its attempts and durable waits: GET /attempts, /waits; actions: POST /cancel,
// POST /retrigger, POST /resume (a failed run), POST /wake (a run waiting on a timer), DELETE /run, POST /signal (a pending wait of a waiting run); trigger: GET /jobs
// and POST /trigger; cron schedules: GET /schedules, POST /schedules/pause|resume|trigger; a run's
// parent and children (child runs, step.invoke): GET /run up the parentRunId chain, GET /runs?parentRunId=; the overview (first screen): GET /overview,
// drawn as inline SVG; a run's timeline from its attempts and waits. The view, the filters and the open run live in the page URL.
// Bulk actions on the listed runs (a selection, or every run matching the filters): bulk.js.

import { createBulk } from './bulk.js'

const API = document.querySelector('meta[name="durably-api"]').content.replace(/\/$/, '')
const PAGE = 20
const STATUSES = ['pending', 'leased', 'waiting', 'completed', 'failed', 'cancelled']
const $ = (id) => document.getElementById(id)

const state = {
  filters: { statuses: [], job: '', labels: '', id: '', range: '' }, // no status: every status; id: a run-id prefix; range: a RANGES key ('': any time)
  limit: PAGE,
  runs: [],
  hasMore: false,
  jobs: [],
  selected: null, // run id
  detail: null, // ClientRun
  steps: [],
  attempts: [],
  waits: [],
  logs: [],
  runsSource: null,
  runSource: null,
  schedules: [],
  tree: emptyTree(null),
  view: 'overview', // or 'runs'
  window: '1h', // the overview's: 1h or 24h
  overview: null,
}

/** The runs list's time ranges: runs created within this long before now (by the browser's clock). */
const RANGES = { '1h': 3_600_000, '24h': 86_400_000, '7d': 7 * 86_400_000, '30d': 30 * 86_400_000 }
const NO_FILTERS = () => ({ statuses: [], job: '', labels: '', id: '', range: '' })

/** Ancestors shown above a run at most (the chain is cut there, with a link to go on). */
const TREE_DEPTH = 20
/** Children read per run at most; and shown before "Show all". */
const CHILDREN_LIMIT = 200
const CHILDREN_SHOWN = 10

/** The open run's place in the tree: its ancestors (root first), its children (in invoke order), and the grandchildren loaded by a click. */
function emptyTree(id) {
  return { id, ancestors: [], cut: null, children: [], more: false, showAll: false, open: new Set(), kids: new Map() }
}

/** The labels a schedule puts on its runs (its name; the slot, absent when triggered now). */
const SCHEDULE_LABEL = 'durably.schedule'
const SLOT_LABEL = 'durably.schedule.slot'

// ---------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (key === 'class') node.className = value
    else if (key === 'text') node.textContent = value
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value)
    else if (key === 'dataset') Object.assign(node.dataset, value)
    else node.setAttribute(key, value === true ? '' : value)
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    node.append(child instanceof Node ? child : document.createTextNode(String(child)))
  }
  return node
}

/** Calls the API; throws an Error carrying the server's `{"error"}` message. */
async function api(method, path, body) {
  const init = { method, headers: {} }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  let response
  try {
    response = await fetch(API + path, init)
  } catch (error) {
    throw new Error(`Cannot reach the server (${error.message})`)
  }
  const text = await response.text()
  let data = null
  try {
    data = text ? JSON.parse(text) : null
  } catch {
    data = null
  }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' && data.error ? data.error : text || response.statusText
    throw new Error(`${message} (HTTP ${response.status})`)
  }
  return data
}

function parseLabels(text) {
  const labels = {}
  for (const part of text.split(',')) {
    const item = part.trim()
    if (!item) continue
    const eq = item.indexOf('=')
    if (eq <= 0) throw new Error(`Label "${item}" must look like key=value`)
    labels[item.slice(0, eq).trim()] = item.slice(eq + 1).trim()
  }
  return labels
}

function safeLabels(text) {
  try {
    return parseLabels(text)
  } catch {
    return {}
  }
}

function showError(node, message) {
  node.textContent = message || ''
  node.hidden = !message
}

function formatTime(iso) {
  if (!iso) return '—'
  const date = new Date(iso)
  if (Number.isNaN(date.getTime())) return iso
  const today = new Date().toDateString() === date.toDateString()
  return today ? date.toLocaleTimeString() : date.toLocaleString()
}

/** Date and time, always both (a list spans days); the year only when it is not this one. */
function formatDateTime(iso) {
  if (!iso) return '—'
  const date = new Date(iso)
  if (Number.isNaN(date.getTime())) return iso
  const year = date.getFullYear() === new Date().getFullYear() ? undefined : 'numeric'
  const day = date.toLocaleDateString([], { year, month: 'short', day: 'numeric' })
  return `${day} ${date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false })}`
}

/** How long a run ran: first start to end, or to now while it is not over (with …). */
function runTook(run) {
  if (!run.startedAt) return '—'
  const start = Date.parse(run.startedAt)
  if (run.completedAt) return formatDuration(Math.max(0, Date.parse(run.completedAt) - start))
  return run.isTerminal ? '—' : `${formatDuration(Math.max(0, Date.now() - start))}…`
}

/** The first line of `text`, cut at `max` characters. */
function oneLine(text, max) {
  const line = String(text).split('\n')[0]
  return line.length > max ? `${line.slice(0, max - 1)}…` : line
}

function formatDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const minutes = Math.floor(ms / 60_000)
  if (minutes < 60) return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`
}

function json(value) {
  return value === undefined ? '' : JSON.stringify(value, null, 2)
}

function badge(status) {
  return el('span', { class: `badge ${status}`, dataset: { testid: 'status' }, text: status })
}

function progressView(run) {
  const progress = run.progress
  const wrap = el('div', { class: 'progress' })
  if (!progress && run.status !== 'leased') {
    wrap.append(el('span', { class: 'text', text: run.completedStepCount ? `${run.completedStepCount} step${run.completedStepCount === 1 ? '' : 's'}` : '' }))
    return wrap
  }
  const bar = el('div', { class: `bar ${run.status}` }, el('span'))
  const total = progress && typeof progress.total === 'number' && progress.total > 0 ? progress.total : null
  if (total !== null) {
    bar.firstChild.style.width = `${Math.min(100, (100 * progress.current) / total)}%`
    if (progress.current >= total) bar.classList.add('done')
  } else if (run.status === 'leased') {
    bar.classList.add('indeterminate')
  } else {
    bar.firstChild.style.width = '100%'
  }
  const parts = []
  if (progress) parts.push(total !== null ? `${progress.current}/${total}` : `${progress.current}`)
  if (progress && progress.message) parts.push(progress.message)
  wrap.append(bar, el('span', { class: 'text', dataset: { testid: 'progress' }, text: parts.join(' · ') }))
  return wrap
}

function labelChips(labels, clickable) {
  return Object.entries(labels || {}).map(([key, value]) =>
    clickable
      ? el('button', {
          type: 'button',
          class: 'label',
          title: 'Filter by this label',
          text: `${key}=${value}`,
          onclick: (event) => {
            event.stopPropagation()
            const current = safeLabels(state.filters.labels)
            current[key] = value
            setFilters({
              labels: Object.entries(current)
                .map(([k, v]) => `${k}=${v}`)
                .join(', '),
            })
          },
        })
      : el('span', { class: 'label', text: `${key}=${value}` }),
  )
}

const confirmDialog = $('confirm')
function confirmAction(text) {
  if (typeof confirmDialog.showModal !== 'function') return Promise.resolve(window.confirm(text))
  $('confirm-text').textContent = text
  confirmDialog.returnValue = ''
  confirmDialog.showModal()
  return new Promise((resolve) => {
    confirmDialog.addEventListener('close', () => resolve(confirmDialog.returnValue === 'yes'), { once: true })
  })
}

// Bulk actions: bulk.js, given what it uses of this page.
const bulk = createBulk({
  api,
  el,
  $,
  confirmAction,
  listed: () => state.runs,
  query: () => filterQuery(true),
  reload: () => loadRuns(),
})

// ---------- URL <-> state

function readUrl() {
  const params = new URLSearchParams(location.search)
  const statuses = params.getAll('status')
  state.filters = {
    statuses: STATUSES.filter((s) => statuses.includes(s)),
    job: params.get('job') || '',
    labels: params.getAll('label').join(', '),
    id: params.get('id') || '',
    range: Object.hasOwn(RANGES, params.get('range') || '') ? params.get('range') : '',
  }
  state.selected = params.get('run') || null
  const view = params.get('view')
  const narrowed = state.selected || filtered()
  state.view = view === 'runs' || view === 'overview' ? view : narrowed ? 'runs' : 'overview'
  if (state.selected) state.view = 'runs'
  state.window = params.get('window') === '24h' ? '24h' : '1h'
  showStatuses()
  renderJobFilter()
  $('filter-labels').value = state.filters.labels
  $('filter-id').value = state.filters.id
  $('filter-range').value = state.filters.range
}

/** Whether any filter narrows the runs list. */
function filtered() {
  const f = state.filters
  return Boolean(f.statuses.length || f.job || f.labels || f.id || f.range)
}

function writeUrl(push) {
  const params = new URLSearchParams()
  for (const status of state.filters.statuses) params.append('status', status)
  if (state.filters.job) params.set('job', state.filters.job)
  for (const [key, value] of Object.entries(safeLabels(state.filters.labels))) params.append('label', `${key}=${value}`)
  if (state.filters.id) params.set('id', state.filters.id)
  if (state.filters.range) params.set('range', state.filters.range)
  if (state.selected) params.set('run', state.selected)
  const narrowed = state.selected || filtered()
  if (state.view === 'runs' && !narrowed) params.set('view', 'runs')
  if (state.view === 'overview' && narrowed) params.set('view', 'overview')
  if (state.view === 'overview' && state.window !== '1h') params.set('window', state.window)
  const query = params.toString()
  const url = location.pathname + (query ? `?${query}` : '')
  if (url === location.pathname + location.search) return
  if (push) history.pushState(null, '', url)
  else history.replaceState(null, '', url)
}

function filterQuery(includeStatus) {
  const params = new URLSearchParams()
  if (state.filters.job) params.append('jobName', state.filters.job)
  if (includeStatus) for (const status of state.filters.statuses) params.append('status', status)
  if (includeStatus && state.filters.id) params.set('idPrefix', state.filters.id)
  // the time range, from now (the live stream is not narrowed by it: the list is read again)
  if (includeStatus && state.filters.range) params.set('createdSince', new Date(Date.now() - RANGES[state.filters.range]).toISOString())
  for (const [key, value] of Object.entries(safeLabels(state.filters.labels))) params.append(`label.${key}`, value)
  return params
}

// Ticks the status boxes of the current filter.
function showStatuses() {
  for (const box of $('filter-status').querySelectorAll('input[type="checkbox"]')) {
    box.checked = state.filters.statuses.includes(box.value)
  }
}

/** The job filter's choices: the registered jobs, the jobs of the overview and of the listed
 * runs (a server without job definitions still offers those), and the current filter. */
function renderJobFilter() {
  const names = new Set(state.jobs.map((job) => job.name))
  for (const job of state.overview ? state.overview.jobs : []) names.add(job.jobName)
  for (const run of state.runs) names.add(run.jobName)
  if (state.filters.job) names.add(state.filters.job)
  const select = $('filter-job')
  const wanted = [...names].sort()
  const shown = [...select.options].slice(1).map((o) => o.value)
  if (wanted.join('\n') !== shown.join('\n')) {
    select.replaceChildren(el('option', { value: '', text: 'any' }), ...wanted.map((name) => el('option', { value: name, text: name })))
  }
  select.value = state.filters.job
}

function setFilters(changes) {
  // filters are the runs list's: show it
  if (state.view !== 'runs') showView('runs')
  Object.assign(state.filters, changes)
  showStatuses()
  renderJobFilter()
  $('filter-labels').value = state.filters.labels
  $('filter-id').value = state.filters.id
  $('filter-range').value = state.filters.range
  state.limit = PAGE
  bulk.reset()
  writeUrl(true)
  connectRuns()
  loadRuns()
}

// ---------- runs list

let runsRequest = 0
async function loadRuns() {
  const ticket = ++runsRequest
  try {
    parseLabels(state.filters.labels)
  } catch (error) {
    showError($('runs-error'), error.message)
    return
  }
  const params = filterQuery(true)
  params.set('limit', String(state.limit + 1))
  try {
    const runs = await api('GET', `/runs?${params}`)
    if (ticket !== runsRequest) return
    state.hasMore = runs.length > state.limit
    state.runs = runs.slice(0, state.limit)
    showError($('runs-error'), '')
    renderRuns()
    renderJobFilter()
  } catch (error) {
    if (ticket === runsRequest) showError($('runs-error'), `Cannot load runs: ${error.message}`)
  }
}

let refreshTimer = null
function scheduleRefresh() {
  if (refreshTimer) return
  refreshTimer = setTimeout(() => {
    refreshTimer = null
    loadRuns()
  }, 150)
}

function renderRuns() {
  const body = $('runs')
  body.replaceChildren(
    ...state.runs.map((run) =>
      el(
        'tr',
        {
          dataset: { runId: run.id, job: run.jobName, status: run.status },
          class: run.id === state.selected ? 'selected' : '',
          onclick: () => openRun(run.id),
          tabindex: '0',
          onkeydown: (event) => {
            if (event.key === 'Enter' && event.target === event.currentTarget) openRun(run.id)
          },
        },
        el('td', { class: 'pick', onclick: (event) => event.stopPropagation() }, bulk.checkbox(run)),
        el('td', {}, badge(run.status)),
        el('td', { class: 'job', text: run.jobName }),
        el('td', { class: 'progress-cell' }, progressView(run)),
        el('td', { class: 'labels' }, labelChips(run.labels, true)),
        el('td', { class: 'created', title: run.createdAt, text: formatDateTime(run.createdAt) }),
        el('td', { class: 'took', dataset: { testid: 'took' }, title: run.startedAt ? `started ${run.startedAt}` : 'not started', text: runTook(run) }),
        el('td', { class: 'error-col', dataset: { testid: 'run-error' }, title: run.error || '', text: run.error ? oneLine(run.error, 80) : '' }),
        el('td', { class: 'id', title: run.id, text: run.id.slice(-8) }),
      ),
    ),
  )
  const empty = $('runs-empty')
  empty.hidden = state.runs.length > 0
  const narrowed = filtered()
  empty.dataset.kind = narrowed ? 'filtered' : 'none'
  empty.replaceChildren(
    ...(narrowed
      ? ['No runs match these filters. ', el('button', { type: 'button', class: 'link', text: 'Clear them', onclick: () => setFilters(NO_FILTERS()) })]
      : state.jobs.length
        ? ['No runs yet. Trigger one with the form, or from your application (', el('code', { text: 'job.trigger(input)' }), ' or ', el('code', { text: 'POST /trigger' }), ').']
        : ['No runs yet. Runs your application triggers show here as they are created.']),
  )
  $('load-more').hidden = !state.hasMore
  bulk.render()
}

function patchRow(runId, patch) {
  const run = state.runs.find((r) => r.id === runId)
  if (!run) return
  Object.assign(run, patch)
  const row = $('runs').querySelector(`tr[data-run-id="${CSS.escape(runId)}"]`)
  if (row) {
    row.querySelector('.progress-cell').replaceChildren(progressView(run))
    row.dataset.status = run.status
  }
}

function setLive(on, text) {
  const live = $('live')
  live.className = `live ${on ? 'on' : 'off'}`
  live.textContent = text
}

function connectRuns() {
  if (state.runsSource) state.runsSource.close()
  const query = filterQuery(false).toString()
  const source = new EventSource(`${API}/runs/subscribe${query ? `?${query}` : ''}`)
  state.runsSource = source
  source.onopen = () => {
    setLive(true, 'live')
    scheduleRefresh() // catch up on anything missed while disconnected
  }
  source.onerror = () => {
    if (state.runsSource !== source) return
    setLive(false, source.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting…')
  }
  source.onmessage = (message) => {
    let event
    try {
      event = JSON.parse(message.data)
    } catch {
      return
    }
    if (event.type === 'run:progress') {
      patchRow(event.runId, { progress: event.progress })
    } else if (event.type === 'step:complete') {
      patchRow(event.runId, { currentStepIndex: event.stepIndex + 1 })
    } else if (event.type !== 'log:write') {
      scheduleRefresh()
      scheduleOverview()
    }
    if (event.runId && event.runId === state.selected && event.type === 'run:delete') {
      showError($('detail-error'), 'This run was deleted.')
    }
    // a child of the open run changed: its status chip (and the counts) follow
    if (event.type !== 'log:write' && event.type !== 'run:progress' && state.tree.children.some((c) => c.id === event.runId)) {
      scheduleTree()
    }
  }
}

// ---------- run detail

let detailRequest = 0
async function loadDetail() {
  const id = state.selected
  if (!id) return
  const ticket = ++detailRequest
  try {
    const [run, steps, logs, attempts, waits] = await Promise.all([
      api('GET', `/run?runId=${encodeURIComponent(id)}`),
      api('GET', `/steps?runId=${encodeURIComponent(id)}`),
      api('GET', `/logs?runId=${encodeURIComponent(id)}`).catch(() => null),
      api('GET', `/attempts?runId=${encodeURIComponent(id)}`).catch(() => []),
      // refused when the server's auth has no run-access hook for waits: shown as none
      api('GET', `/waits?runId=${encodeURIComponent(id)}`).catch(() => []),
    ])
    if (ticket !== detailRequest || id !== state.selected) return
    state.detail = run
    state.steps = steps
    state.attempts = attempts || []
    state.waits = waits || []
    if (logs) state.logs = logs
    showError($('detail-error'), '')
    renderDetail()
    loadTree(run)
  } catch (error) {
    if (ticket !== detailRequest) return
    showError($('detail-error'), error.message)
    if (!state.detail) renderDetail()
  }
}

let detailTimer = null
function scheduleDetail() {
  if (detailTimer) return
  detailTimer = setTimeout(() => {
    detailTimer = null
    loadDetail()
  }, 60)
}

function connectRun(id) {
  if (state.runSource) {
    state.runSource.close()
    state.runSource = null
  }
  const source = new EventSource(`${API}/subscribe?runId=${encodeURIComponent(id)}`)
  state.runSource = source
  source.onmessage = (message) => {
    let event
    try {
      event = JSON.parse(message.data)
    } catch {
      return
    }
    if (event.runId !== state.selected || !state.detail) return
    switch (event.type) {
      case 'run:leased':
        state.detail.status = 'leased'
        renderDetail()
        break
      case 'run:progress':
        state.detail.progress = event.progress
        renderDetailProgress()
        break
      case 'log:write':
        state.logs.push({
          stepName: event.stepName,
          level: event.level,
          message: event.message,
          data: event.data,
          createdAt: event.timestamp,
        })
        renderLogs()
        break
      case 'run:complete':
      case 'run:fail':
      case 'run:cancel':
      case 'run:delete':
        // the stream ends here; EventSource would reconnect and replay, so stop it
        source.close()
        if (state.runSource === source) state.runSource = null
        if (event.type === 'run:delete') showError($('detail-error'), 'This run was deleted.')
        else scheduleDetail()
        break
      default:
        scheduleDetail()
    }
  }
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && state.runSource === source) state.runSource = null
  }
}

function openRun(id, push = true) {
  const changed = state.selected !== id || !state.detail
  state.selected = id
  if (state.view !== 'runs') showView('runs')
  writeUrl(push)
  $('layout').classList.add('with-detail')
  $('detail').hidden = false
  for (const row of $('runs').children) row.classList.toggle('selected', row.dataset.runId === id)
  if (changed) {
    state.detail = null
    state.steps = []
    state.attempts = []
    state.waits = []
    state.logs = []
    state.tree = emptyTree(id)
    showError($('detail-error'), '')
    $('detail-id').textContent = id
    renderDetail()
    loadDetail().then(() => {
      if (state.selected === id && state.detail && !state.detail.isTerminal) connectRun(id)
    })
  }
}

function closeRun(push = true) {
  state.selected = null
  state.detail = null
  if (state.runSource) state.runSource.close()
  state.runSource = null
  writeUrl(push)
  $('detail').hidden = true
  $('layout').classList.remove('with-detail')
  for (const row of $('runs').children) row.classList.remove('selected')
}

function renderDetailProgress() {
  const run = state.detail
  $('detail-progress').replaceChildren(run && (run.progress || run.status === 'leased') ? progressView(run) : '')
  if (run) patchRow(run.id, { progress: run.progress })
}

function renderLogs() {
  const list = $('detail-logs')
  if (!state.logs.length) {
    list.replaceChildren(el('li', { class: 'muted', text: 'No logs.' }))
    return
  }
  list.replaceChildren(
    ...state.logs.map((log) =>
      el(
        'li',
        {},
        el('span', { class: 'when', text: log.createdAt ? formatTime(log.createdAt) : '' }),
        el('span', { class: `lvl ${log.level}`, text: log.level }),
        log.stepName ? el('span', { class: 'step', text: `[${log.stepName}]` }) : null,
        el('span', { text: log.message }),
        log.data !== undefined && log.data !== null ? el('span', { class: 'muted', text: JSON.stringify(log.data) }) : null,
      ),
    ),
  )
}

function renderDetail() {
  const run = state.detail
  const id = state.selected
  $('detail-id').textContent = id || ''
  const status = $('detail-status')
  if (!run) {
    $('detail-title').textContent = 'Run'
    status.className = 'badge'
    status.textContent = 'loading'
    for (const name of ['cancel', 'resume', 'wake', 'retrigger', 'delete']) $(`action-${name}`).hidden = true
    $('detail-why').hidden = true
    for (const name of ['detail-input', 'detail-result']) $(name).textContent = ''
    $('detail-steps').replaceChildren()
    $('detail-attempts').replaceChildren()
    $('detail-waits').replaceChildren()
    $('detail-waits-box').hidden = true
    $('detail-logs').replaceChildren()
    $('detail-times').replaceChildren()
    $('detail-labels').replaceChildren()
    $('detail-progress').replaceChildren()
    renderTimeline()
    renderTree()
    return
  }
  $('detail-title').textContent = run.jobName
  status.className = `badge ${run.status}`
  status.textContent = run.status
  $('action-cancel').hidden = run.isTerminal
  $('action-resume').hidden = run.status !== 'failed'
  $('action-retrigger').hidden = !run.isTerminal
  $('action-delete').hidden = !run.isTerminal
  renderWhy(run, state.waits || [])
  renderDetailProgress()
  const times = [
    ['Created', run.createdAt],
    ['Started', run.startedAt],
    ['Finished', run.completedAt],
  ]
  const rows = times.flatMap(([name, value]) => [el('dt', { text: name }), el('dd', { title: value || '', text: formatTime(value) })])
  if (run.startedAt && run.completedAt) {
    rows.push(el('dt', { text: 'Took' }), el('dd', { text: formatDuration(new Date(run.completedAt) - new Date(run.startedAt)) }))
  }
  if (run.priority) {
    rows.push(el('dt', { text: 'Priority' }), el('dd', { title: 'Claimed before runs of lower priority (default 0)', text: String(run.priority) }))
  }
  const schedule = run.labels && run.labels[SCHEDULE_LABEL]
  if (schedule) {
    const slot = run.labels[SLOT_LABEL]
    rows.push(
      el('dt', { text: 'Schedule' }),
      el(
        'dd',
        { dataset: { testid: 'detail-schedule' } },
        el('button', {
          type: 'button',
          class: 'link',
          title: "Show this schedule's runs",
          text: schedule,
          onclick: () => setFilters({ labels: `${SCHEDULE_LABEL}=${schedule}` }),
        }),
        slot ? ` · slot ${formatTime(slot)}` : ' · triggered now',
      ),
    )
  }
  $('detail-times').replaceChildren(...rows)
  const chips = labelChips(run.labels, false)
  $('detail-labels').replaceChildren(...(chips.length ? [el('h3', { text: 'Labels' }), ...chips] : []))
  $('detail-input').textContent = json(run.input)
  const resultBox = $('detail-result-box')
  const result = $('detail-result')
  if (run.status === 'failed') {
    resultBox.hidden = false
    $('detail-result-title').textContent = 'Error'
    result.className = 'error-text'
    result.textContent = run.error || 'Unknown error'
  } else if (run.status === 'completed') {
    resultBox.hidden = false
    $('detail-result-title').textContent = 'Output'
    result.className = ''
    result.textContent = json(run.output)
  } else {
    resultBox.hidden = true
  }
  $('steps-count').textContent = state.steps.length ? `(${state.steps.length})` : ''
  const steps = state.steps.map((step) => {
    const took = step.startedAt && step.completedAt ? formatDuration(new Date(step.completedAt) - new Date(step.startedAt)) : ''
    return el(
      'li',
      { dataset: { status: step.status } },
      el('span', { class: 'idx', text: step.index }),
      el('span', { class: 'name' }, step.name, ' ', el('span', { class: 'dur', text: took })),
      badge(step.status),
      step.error ? el('span', { class: 'step-error', text: step.error }) : null,
    )
  })
  const attempts = state.attempts || []
  if (!steps.length) {
    const text = !run.isTerminal
      ? 'No steps yet.'
      : attempts.length
        ? 'Step outputs were dropped when the run ended; what each step did is under Attempts.'
        : 'No steps stored.'
    steps.push(el('li', { class: 'muted', text }))
  }
  $('detail-steps').replaceChildren(...steps)
  renderTimeline()
  renderAttempts(attempts)
  renderWaits(state.waits || [], run)
  renderLogs()
}

/** The timer a wait is, from the metadata durably gives the waits it creates
 * (`{"durably": {"kind": …}}`), or null for a wait for a signal. Mirrors
 * `TimerKind::of` in src/waits/timer.rs, so the page says what the CLI and the API say. */
function timerKind(wait) {
  const meta = wait && wait.metadata && typeof wait.metadata === 'object' ? wait.metadata.durably : null
  if (!meta || typeof meta !== 'object') return null
  const number = (key) => (Number.isInteger(meta[key]) && meta[key] >= 0 ? meta[key] : 0)
  const error = typeof meta.error === 'string' ? meta.error : null
  switch (meta.kind) {
    case 'delay':
      return { kind: 'delay', retry: false }
    case 'retry':
      return { kind: 'retry', retry: true, step: String(meta.step ?? ''), next: number('failedAttempts') + 1, max: number('maxAttempts'), error }
    case 'run-retry':
      return { kind: 'run-retry', retry: true, next: number('failedAttempt') + 1, max: number('maxAttempts'), error }
    case 'sleep':
      return { kind: 'sleep', retry: false }
    default:
      return null
  }
}

/** Why a run waiting on `wait` is not running and when it will (`TimerKind::describe` and
 * `why_waiting` in src/waits/timer.rs). */
function whyWaiting(wait) {
  if (wait.status !== 'pending') return `wait ${wait.name} is ${wait.status}: the run resumes at the next claim of a worker`
  const at = wait.deadlineAt ? formatTime(wait.deadlineAt) : 'an unknown time'
  const lastError = (timer) => (timer.error ? `, last error: ${timer.error}` : '')
  const timer = timerKind(wait)
  if (!timer) return wait.deadlineAt ? `waiting for the signal ${wait.name} (or until ${at}, when it times out)` : `waiting for the signal ${wait.name}`
  switch (timer.kind) {
    case 'delay':
      return `delayed until ${at}`
    case 'retry':
      return `step ${timer.step}: attempt ${timer.next} of ${timer.max} at ${at}${lastError(timer)}`
    case 'run-retry':
      return `run attempt ${timer.next} of ${timer.max} at ${at}${lastError(timer)}`
    default:
      return `sleeping until ${at}`
  }
}

/** The wait a waiting run waits on: its last pending wait it was suspended on (a delayed
 * run's `delay` wait has no suspension time), else its last pending wait. */
function currentWait(waits) {
  const pending = waits.filter((wait) => wait.status === 'pending')
  const suspended = pending.filter((wait) => wait.suspendedAt)
  const pick = suspended.length ? suspended : pending
  return pick.length ? pick[pick.length - 1] : null
}

/** For a waiting run: a line saying why it is not running and when it will, and the
 * "Run now" / "Retry now" button (POST /wake) when it waits on a timer. */
function renderWhy(run, waits) {
  const why = $('detail-why')
  const wake = $('action-wake')
  const wait = run.status === 'waiting' ? currentWait(waits) : null
  why.hidden = !wait
  wake.hidden = true
  if (!wait) return
  const timer = timerKind(wait)
  why.textContent = `Not running: ${whyWaiting(wait)}.`
  why.title = wait.deadlineAt ? `wait ${wait.name} (${wait.id}), deadline ${wait.deadlineAt}` : `wait ${wait.name} (${wait.id})`
  why.dataset.kind = timer ? timer.kind : 'signal'
  if (timer) {
    wake.hidden = false
    wake.textContent = timer.retry ? 'Retry now' : 'Run now'
    wake.title = timer.retry ? 'Run the next attempt now instead of at the end of the backoff' : 'Start or continue this run now instead of at its time'
  } else {
    why.textContent += ' Send the signal under Waits below.'
  }
}

/** A run's durable waits: name, status and outcome, deadline, signal; a signal form for a
 * pending wait of a waiting run. Hidden when the run has none. */
function renderWaits(waits, run) {
  $('detail-waits-box').hidden = !waits.length
  $('waits-count').textContent = waits.length ? `(${waits.length})` : ''
  const list = $('detail-waits')
  // keep a form the user is typing in across live refreshes
  const open = list.querySelector('.wait-form')
  const typing = open && open.contains(document.activeElement) ? open.dataset.waitId : null
  const rows = waits.map((wait, i) => {
    const shown = wait.outcome ? `${wait.status}: ${wait.outcome}` : wait.status
    const info = []
    if (wait.suspendedAt) info.push(`waiting since ${formatTime(wait.suspendedAt)}`)
    if (wait.deadlineAt) info.push(`deadline ${formatTime(wait.deadlineAt)}`)
    if (wait.signalId) info.push(`signal ${wait.signalId}`)
    if (wait.outcome === 'signal') info.push(`payload ${JSON.stringify(wait.payload)}`)
    if (wait.metadata !== null && wait.metadata !== undefined) info.push(`metadata ${JSON.stringify(wait.metadata)}`)
    const item = el(
      'li',
      { dataset: { status: wait.status, waitId: wait.id }, title: `wait ${wait.id}, created ${wait.createdAt}` },
      el('span', { class: 'idx', text: i + 1 }),
      el('span', { class: 'name' }, wait.name, ' ', el('span', { class: 'dur', text: wait.id })),
      el('span', { class: `badge ${wait.outcome || wait.status}`, dataset: { testid: 'wait-status' }, text: shown }),
      info.length ? el('span', { class: 'wait-info', text: info.join(' · ') }) : null,
    )
    if (wait.status === 'pending' && run && run.status === 'waiting') {
      if (typing === wait.id) item.append(open)
      else item.append(signalForm(run, wait))
    }
    return item
  })
  list.replaceChildren(...rows)
}

/** POST /signal for one pending wait: a JSON payload and a signal id (its idempotency key). */
function signalForm(run, wait) {
  const payload = el('textarea', { rows: '2', spellcheck: 'false', placeholder: 'payload (JSON)', 'aria-label': 'Signal payload (JSON)', dataset: { testid: 'signal-payload' } })
  payload.value = '{}'
  const signalId = el('input', { type: 'text', placeholder: 'signal id', 'aria-label': 'Signal id', autocomplete: 'off', dataset: { testid: 'signal-id' } })
  signalId.value = `dashboard-${Date.now().toString(36)}`
  const error = el('p', { class: 'error', role: 'alert', hidden: true })
  const button = el('button', { type: 'submit', dataset: { testid: 'signal-send' }, text: 'Send signal' })
  const form = el('form', { class: 'wait-form', dataset: { waitId: wait.id, testid: 'signal-form' } }, payload, el('div', { class: 'row' }, signalId, button), error)
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    let body
    try {
      body = { signalId: signalId.value, payload: JSON.parse(payload.value) }
    } catch (e) {
      showError(error, `The payload is not JSON: ${e.message}`)
      return
    }
    button.disabled = true
    showError(error, '')
    try {
      await api('POST', `/signal?runId=${encodeURIComponent(run.id)}&waitId=${encodeURIComponent(wait.id)}`, body)
      payload.blur()
      signalId.blur()
      await loadDetail()
    } catch (e) {
      showError(error, `Cannot signal: ${e.message}`)
    } finally {
      button.disabled = false
    }
  })
  return form
}

/** One row per execution of a step's function: how it ended, or why it never did. */
function renderAttempts(attempts) {
  $('attempts-count').textContent = attempts.length ? `(${attempts.length})` : ''
  const rows = attempts.map((attempt) => {
    const took = attempt.completedAt ? formatDuration(new Date(attempt.completedAt) - new Date(attempt.startedAt)) : ''
    const outcome = attempt.status === 'started' && attempt.interruptionReason ? attempt.interruptionReason : attempt.status
    const why = {
      'lease-lost': 'Its worker lost the lease (crashed, froze or was too slow); another attempt took over.',
      cancelled: 'The run was cancelled while it ran.',
      unknown: 'The run ended without its outcome.',
    }[attempt.interruptionReason]
    return el(
      'li',
      { dataset: { status: outcome }, title: `started ${attempt.startedAt}, lease generation ${attempt.leaseGeneration}` },
      el('span', { class: 'idx', text: attempt.stepIndex }),
      el('span', { class: 'name' }, attempt.stepName, ' ', el('span', { class: 'dur', text: `${formatTime(attempt.startedAt)} ${took}` })),
      badge(outcome),
      attempt.error ? el('span', { class: 'step-error', text: attempt.error }) : why ? el('span', { class: 'step-error', text: why }) : null,
    )
  })
  if (!rows.length) rows.push(el('li', { class: 'muted', text: 'No step has run yet.' }))
  $('detail-attempts').replaceChildren(...rows)
}

async function runAction(kind) {
  const run = state.detail
  if (!run) return
  const id = run.id
  const questions = {
    cancel: `Cancel this ${run.jobName} run? Its current step is aborted.`,
    retrigger: `Start a new ${run.jobName} run with the same input?`,
    resume: `Resume this failed ${run.jobName} run from its failed step? Its completed steps are not executed again.`,
    wake: `${$('action-wake').textContent} this ${run.jobName} run, instead of waiting for its time?`,
    delete: `Delete this ${run.jobName} run with its steps and logs? This cannot be undone.`,
  }
  if (!(await confirmAction(questions[kind]))) return
  const button = $(`action-${kind}`)
  button.disabled = true
  showError($('detail-error'), '')
  try {
    if (kind === 'cancel') {
      await api('POST', `/cancel?runId=${encodeURIComponent(id)}`)
      await loadDetail()
    } else if (kind === 'resume') {
      await api('POST', `/resume?runId=${encodeURIComponent(id)}`)
      await loadDetail()
      // the run's stream ended with its failure: follow the resumed execution live again
      if (state.selected === id && state.detail && !state.detail.isTerminal) connectRun(id)
    } else if (kind === 'wake') {
      await api('POST', `/wake?runId=${encodeURIComponent(id)}`)
      await loadDetail()
    } else if (kind === 'retrigger') {
      const result = await api('POST', `/retrigger?runId=${encodeURIComponent(id)}`)
      scheduleRefresh()
      if (result && result.runId) openRun(result.runId)
    } else {
      await api('DELETE', `/run?runId=${encodeURIComponent(id)}`)
      closeRun()
    }
    scheduleRefresh()
  } catch (error) {
    showError($('detail-error'), `Cannot ${kind}: ${error.message}`)
  } finally {
    button.disabled = false
  }
}

// ---------- parent and children

/** A run's children, in the order they were invoked (`{runs, more}`: more than CHILDREN_LIMIT). */
async function fetchChildren(id) {
  const runs = await api('GET', `/runs?parentRunId=${encodeURIComponent(id)}&limit=${CHILDREN_LIMIT + 1}`)
  const more = runs.length > CHILDREN_LIMIT
  const kept = runs.slice(0, CHILDREN_LIMIT)
  kept.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  return { runs: kept, more }
}

/** The chain of `run`'s ancestors, root first, at most TREE_DEPTH; `cut`: the id above the top one when the chain goes on. A parent that cannot be read (deleted) ends the chain as `{id, missing}`. */
async function fetchAncestors(run) {
  const chain = []
  let parentId = run.parentRunId
  while (parentId && chain.length < TREE_DEPTH) {
    const parent = await api('GET', `/run?runId=${encodeURIComponent(parentId)}`).catch(() => null)
    if (!parent) {
      chain.unshift({ id: parentId, missing: true })
      return { chain, cut: null }
    }
    chain.unshift(parent)
    parentId = parent.parentRunId
  }
  return { chain, cut: parentId || null }
}

let treeRequest = 0
async function loadTree(run) {
  const id = run.id
  const ticket = ++treeRequest
  try {
    const [ancestors, children] = await Promise.all([fetchAncestors(run), fetchChildren(id)])
    if (ticket !== treeRequest || state.selected !== id || state.tree.id !== id) return
    Object.assign(state.tree, { ancestors: ancestors.chain, cut: ancestors.cut, children: children.runs, more: children.more })
    showError($('tree-error'), '')
  } catch (error) {
    if (ticket !== treeRequest || state.selected !== id) return
    showError($('tree-error'), `Cannot load the child runs: ${error.message}`)
  }
  renderTree()
}

let treeTimer = null
function scheduleTree() {
  if (treeTimer) return
  treeTimer = setTimeout(() => {
    treeTimer = null
    if (state.detail && state.detail.id === state.selected) loadTree(state.detail)
  }, 400)
}

/** `7 children: 6 completed, 1 failed` (`200+ children, the newest 200: …` past CHILDREN_LIMIT). */
function childrenSummary(children, more) {
  const counts = STATUSES.map((status) => [status, children.filter((c) => c.status === status).length])
    .filter(([, n]) => n > 0)
    .map(([status, n]) => `${n} ${status}`)
    .join(', ')
  const n = children.length
  if (more) return `${n}+ children, the newest ${n}: ${counts}`
  return `${n} child${n === 1 ? '' : 'ren'}: ${counts}`
}

/** A row of the tree indented `depth` levels. */
function treeLi(depth, attrs, ...children) {
  const li = el('li', attrs, ...children)
  li.style.setProperty('--depth', String(depth))
  return li
}

/** One row of the tree: expand toggle (children and below), status, job, short id link. */
function treeRow(run, depth, level, testid) {
  const tree = state.tree
  const expandable = level === 'child' || level === 'descendant'
  const open = tree.open.has(run.id)
  const toggle = expandable
    ? el('button', {
        type: 'button',
        class: 'toggle',
        title: open ? 'Hide its children' : 'Show its children',
        'aria-expanded': String(open),
        dataset: { testid: 'tree-expand' },
        text: open ? '▾' : '▸',
        onclick: () => toggleKids(run.id),
      })
    : el('span', { class: 'spacer', text: level === 'self' ? '●' : '' })
  const short = `…${run.id.slice(-8)}`
  return treeLi(
    depth,
    { class: level, dataset: { runId: run.id, level, testid: `tree-${level}` } },
    toggle,
    run.missing ? null : badge(run.status),
    el('span', { class: 'job', text: run.missing ? '(deleted or not readable)' : run.jobName }),
    level === 'self' ? el('span', { class: 'muted small', text: 'this run' }) : runLink(run.id, testid, short),
  )
}

async function toggleKids(id) {
  const tree = state.tree
  if (tree.open.has(id)) {
    tree.open.delete(id)
    renderTree()
    return
  }
  tree.open.add(id)
  if (!tree.kids.has(id)) {
    try {
      tree.kids.set(id, await fetchChildren(id))
    } catch (error) {
      tree.kids.set(id, { runs: [], more: false, error: error.message })
    }
    if (state.tree !== tree) return
  }
  renderTree()
}

/** The rows under an expanded run: its children, each expandable in turn. */
function kidRows(id, depth) {
  const tree = state.tree
  if (!tree.open.has(id)) return []
  const kids = tree.kids.get(id)
  if (!kids) return [treeLi(depth, { class: 'note', text: 'loading…' })]
  if (kids.error) return [treeLi(depth, { class: 'note', text: `Cannot load its children: ${kids.error}` })]
  if (!kids.runs.length) return [treeLi(depth, { class: 'note', dataset: { testid: 'tree-none' }, text: 'no child runs' })]
  const rows = kids.runs.flatMap((kid) => [treeRow(kid, depth, 'descendant', 'tree-link'), ...kidRows(kid.id, depth + 1)])
  if (kids.more) rows.push(treeLi(depth, { class: 'note', text: `… only the newest ${kids.runs.length} are shown` }))
  return rows
}

function renderTree() {
  const tree = state.tree
  const run = state.detail
  const box = $('detail-tree-box')
  if (!run || tree.id !== run.id || (!tree.ancestors.length && !tree.children.length)) {
    box.hidden = true
    $('detail-tree').replaceChildren()
    $('tree-count').textContent = ''
    return
  }
  box.hidden = false
  const rows = []
  if (tree.cut) {
    const above = runLink(tree.cut, 'tree-link', `…${tree.cut.slice(-8)}`)
    rows.push(treeLi(0, { class: 'note' }, el('span', { class: 'spacer', text: '⋮' }), `more than ${TREE_DEPTH} ancestors; further up: `, above))
  }
  const last = tree.ancestors.length - 1
  tree.ancestors.forEach((ancestor, i) => rows.push(treeRow(ancestor, i, 'ancestor', i === last ? 'tree-parent' : 'tree-link')))
  const depth = tree.ancestors.length
  rows.push(treeRow(run, depth, 'self'))
  const shown = tree.showAll ? tree.children : tree.children.slice(0, CHILDREN_SHOWN)
  for (const child of shown) rows.push(treeRow(child, depth + 1, 'child', 'tree-link'), ...kidRows(child.id, depth + 2))
  if (shown.length < tree.children.length) {
    rows.push(
      treeLi(
        depth + 1,
        { class: 'more' },
        el('button', {
          type: 'button',
          class: 'link',
          dataset: { testid: 'tree-more' },
          text: `Show all ${tree.children.length}`,
          onclick: () => {
            tree.showAll = true
            renderTree()
          },
        }),
      ),
    )
  }
  $('detail-tree').replaceChildren(...rows)
  $('tree-count').textContent = tree.children.length ? `(${childrenSummary(tree.children, tree.more)})` : ''
}

// ---------- trigger form

function schemaType(schema) {
  if (!schema || typeof schema !== 'object') return null
  let type = schema.type
  if (Array.isArray(type)) type = type.find((t) => t !== 'null')
  if (!type && Array.isArray(schema.enum)) type = 'enum'
  return type || null
}

function renderForm() {
  const select = $('trigger-job')
  const job = state.jobs.find((j) => j.name === select.value)
  const box = $('schema-fields')
  box.replaceChildren()
  const raw = $('raw-input')
  raw.dataset.edited = ''
  const schema = job && job.inputSchema
  const properties = schema && schema.type === 'object' && schema.properties && typeof schema.properties === 'object' ? schema.properties : null
  if (!properties) {
    raw.value = job ? '{}' : ''
    $('raw-box').open = Boolean(job)
    if (job) box.append(el('p', { class: 'muted small', text: 'This job has no input schema: write its input as JSON below.' }))
    return
  }
  $('raw-box').open = false
  const required = new Set(Array.isArray(schema.required) ? schema.required : [])
  for (const [name, property] of Object.entries(properties)) {
    const type = schemaType(property)
    const id = `input-${name}`
    const title = [name, required.has(name) ? ' *' : '']
    const hint = property.description ? el('span', { class: 'muted small hint', text: property.description }) : null
    let control
    if (Array.isArray(property.enum)) {
      control = el(
        'select',
        { id, name, dataset: { kind: 'enum' } },
        required.has(name) ? null : el('option', { value: '', text: '' }),
        property.enum.map((value, i) => el('option', { value: String(i), text: JSON.stringify(value) })),
      )
      control.enumValues = property.enum
    } else if (type === 'boolean') {
      control = el('input', { id, name, type: 'checkbox', dataset: { kind: 'boolean' } })
      if (property.default === true) control.checked = true
      box.append(el('label', { class: 'check' }, control, title, hint))
      control.addEventListener('input', syncRaw)
      continue
    } else if (type === 'integer' || type === 'number') {
      control = el('input', {
        id,
        name,
        type: 'number',
        inputmode: type === 'integer' ? 'numeric' : 'decimal',
        step: type === 'integer' ? '1' : 'any',
        min: property.minimum,
        max: property.maximum,
        placeholder: property.default !== undefined ? String(property.default) : '',
        dataset: { kind: type },
      })
    } else if (type === 'string') {
      control = el('input', { id, name, type: 'text', placeholder: property.default ?? '', dataset: { kind: 'string' } })
    } else {
      control = el('textarea', { id, name, rows: '2', spellcheck: 'false', placeholder: 'JSON', dataset: { kind: 'json' } })
    }
    if (property.examples && property.examples.length && control.tagName !== 'SELECT') {
      const example = property.examples[0]
      control.value = control.dataset.kind === 'json' ? JSON.stringify(example) : String(example)
    }
    control.required = required.has(name)
    control.addEventListener('input', syncRaw)
    box.append(el('label', { class: 'field', for: id }, el('span', {}, title), control, hint))
  }
  syncRaw()
}

/** The input built from the schema fields; throws on a value that cannot be read. */
function formInput() {
  const input = {}
  for (const control of $('schema-fields').querySelectorAll('[data-kind]')) {
    const name = control.name
    const kind = control.dataset.kind
    if (kind === 'boolean') {
      input[name] = control.checked
      continue
    }
    if (kind === 'enum') {
      if (control.value !== '') input[name] = control.enumValues[Number(control.value)]
      continue
    }
    const text = control.value.trim()
    if (text === '') continue
    if (kind === 'integer' || kind === 'number') {
      const number = Number(text)
      if (!Number.isFinite(number)) throw new Error(`${name} must be a number`)
      input[name] = number
    } else if (kind === 'string') {
      input[name] = control.value
    } else {
      try {
        input[name] = JSON.parse(text)
      } catch {
        throw new Error(`${name} must be JSON (for text, use quotes: "like this")`)
      }
    }
  }
  return input
}

function syncRaw() {
  const raw = $('raw-input')
  try {
    raw.value = JSON.stringify(formInput(), null, 2)
  } catch {
    /* keep the last valid value */
  }
  raw.dataset.edited = ''
}

async function loadJobs() {
  try {
    state.jobs = await api('GET', '/jobs')
  } catch (error) {
    state.jobs = []
    showError($('trigger-error'), `Cannot list jobs: ${error.message}`)
  }
  renderJobFilter()
  const select = $('trigger-job')
  const previous = select.value
  select.replaceChildren(...state.jobs.map((job) => el('option', { value: job.name, text: job.name })))
  if (state.jobs.some((job) => job.name === previous)) select.value = previous
  const none = state.jobs.length === 0
  const note = $('no-jobs')
  note.hidden = !none
  note.textContent = none
    ? 'This server has no job definitions, so it cannot trigger runs. Runs created by your application still show here, and you can cancel or delete them. To trigger from here, serve the dashboard from a process that registers the jobs.'
    : ''
  for (const id of ['job-field', 'raw-box', 'trigger-submit']) $(id).hidden = none
  $('trigger-labels').closest('label').hidden = none
  $('trigger-card').open = window.innerWidth > 760
  renderForm()
  // the empty state's advice depends on whether this server can trigger
  if (!state.runs.length) renderRuns()
}

async function submitTrigger(event) {
  event.preventDefault()
  const jobName = $('trigger-job').value
  showError($('trigger-error'), '')
  $('trigger-ok').hidden = true
  if (!jobName) {
    showError($('trigger-error'), 'Choose a job first.')
    return
  }
  let input
  let labels
  try {
    const raw = $('raw-input')
    if (raw.dataset.edited || !$('schema-fields').querySelector('[data-kind]')) {
      try {
        input = raw.value.trim() ? JSON.parse(raw.value) : null
      } catch (error) {
        throw new Error(`The input is not valid JSON: ${error.message}`)
      }
    } else {
      input = formInput()
    }
    labels = parseLabels($('trigger-labels').value)
  } catch (error) {
    showError($('trigger-error'), error.message)
    return
  }
  const body = { jobName, input }
  if (Object.keys(labels).length) body.labels = labels
  const button = $('trigger-submit')
  button.disabled = true
  try {
    const result = await api('POST', '/trigger', body)
    const ok = $('trigger-ok')
    ok.replaceChildren(
      `${result.disposition === 'created' ? 'Triggered' : `Existing run (${result.disposition})`}: `,
      runLink(result.runId, 'trigger-run'),
    )
    ok.hidden = false
    scheduleRefresh()
  } catch (error) {
    showError($('trigger-error'), error.message)
  } finally {
    button.disabled = false
  }
}

/** A link to a run's page that opens it in place (`testid` names it for the browser tests). */
function runLink(runId, testid, text = runId) {
  return el('a', {
    href: `?run=${encodeURIComponent(runId)}`,
    class: 'mono',
    title: runId,
    dataset: { testid },
    text,
    onclick: (e) => {
      e.preventDefault()
      openRun(runId)
    },
  })
}

// ---------- schedules

/** `in 42 s` / `3 min 2 s ago`. */
function formatRelative(iso) {
  const ms = new Date(iso) - Date.now()
  if (Number.isNaN(ms)) return ''
  return ms >= 0 ? `in ${formatDuration(ms)}` : `${formatDuration(-ms)} ago`
}

async function loadSchedules() {
  try {
    state.schedules = await api('GET', '/schedules')
    showError($('schedules-error'), '')
  } catch (error) {
    showError($('schedules-error'), `Cannot list schedules: ${error.message}`)
    return
  }
  renderSchedules()
}

function renderSchedules() {
  const list = state.schedules || []
  $('schedules-empty').hidden = list.length > 0
  $('schedules').replaceChildren(
    ...list.map((schedule) => {
      const next = schedule.paused
        ? 'paused: fires nothing until resumed'
        : `next ${formatTime(schedule.nextFireAt)} (${formatRelative(schedule.nextFireAt)})`
      const last = schedule.lastFiredAt ? `last ${formatTime(schedule.lastFiredAt)} (${formatRelative(schedule.lastFiredAt)})` : 'never fired'
      return el(
        'li',
        { dataset: { testid: 'schedule', name: schedule.name, paused: String(schedule.paused) } },
        el(
          'div',
          { class: 'row' },
          el('span', { class: 'name', text: schedule.name }),
          el('span', { class: `badge ${schedule.paused ? 'paused' : 'active'}`, dataset: { testid: 'schedule-state' }, text: schedule.paused ? 'paused' : 'active' }),
        ),
        el('div', { class: 'meta mono', text: `${schedule.jobName} · ${schedule.cron} · ${schedule.timeZone}` }),
        el('div', { class: 'meta', title: schedule.nextFireAt, dataset: { testid: 'schedule-next' }, text: next }),
        el('div', { class: 'meta', title: schedule.lastFiredAt || '', dataset: { testid: 'schedule-last' }, text: last }),
        el(
          'div',
          { class: 'row' },
          el('button', {
            type: 'button',
            dataset: { testid: schedule.paused ? 'schedule-resume' : 'schedule-pause' },
            text: schedule.paused ? 'Resume' : 'Pause',
            onclick: (e) => scheduleAction(schedule.paused ? 'resume' : 'pause', schedule.name, e.target),
          }),
          el('button', {
            type: 'button',
            class: 'primary',
            dataset: { testid: 'schedule-trigger' },
            title: "Run the schedule's job now, outside its slots",
            text: 'Trigger now',
            onclick: (e) => scheduleAction('trigger', schedule.name, e.target),
          }),
          el('button', {
            type: 'button',
            class: 'link',
            title: "Show this schedule's runs",
            text: 'runs',
            onclick: () => setFilters({ labels: `${SCHEDULE_LABEL}=${schedule.name}` }),
          }),
        ),
      )
    }),
  )
}

async function scheduleAction(kind, name, button) {
  showError($('schedules-error'), '')
  const ok = $('schedules-ok')
  ok.hidden = true
  button.disabled = true
  try {
    const result = await api('POST', `/schedules/${kind}?name=${encodeURIComponent(name)}`)
    if (kind === 'trigger') {
      ok.replaceChildren(`Triggered ${name}: `, runLink(result.runId, 'schedule-run'))
      ok.hidden = false
      scheduleRefresh()
    }
  } catch (error) {
    showError($('schedules-error'), error.message)
  } finally {
    button.disabled = false
  }
  await loadSchedules()
}

// ---------- views: the overview (first screen) and the runs list

/** Shows `view` ('overview' or 'runs'). */
function showView(view) {
  state.view = view
  $('overview').hidden = view !== 'overview'
  $('runs-section').hidden = view !== 'runs'
  $('tab-overview').setAttribute('aria-selected', String(view === 'overview'))
  $('tab-runs').setAttribute('aria-selected', String(view === 'runs'))
  if (view === 'overview') loadOverview()
}

function setView(view) {
  if (view === 'overview' && state.selected) closeRun(false)
  showView(view)
  writeUrl(true)
}

// ---------- overview: GET /overview?window=1h|24h, drawn as inline SVG

const SVG = 'http://www.w3.org/2000/svg'

/** An SVG element (as `el`, for the SVG namespace); `title` becomes a <title> child (a tooltip). */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (key === 'text') node.textContent = value
    else if (key === 'title') node.append(svg('title', { text: value }))
    else if (key === 'dataset') for (const [k, v] of Object.entries(value)) node.dataset[k] = v
    else node.setAttribute(key, value)
  }
  for (const child of children.flat()) if (child) node.append(child)
  return node
}

/** The smallest of 1, 2, 5 × 10^k at or above `value` (an axis maximum). */
function niceMax(value) {
  if (value <= 1) return 1
  const power = 10 ** Math.floor(Math.log10(value))
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power
  return 10 * power
}

function bucketLabel(iso, window) {
  const date = new Date(iso)
  return window === '24h'
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
}

const CHART = { width: 640, height: 170, left: 46, right: 8, top: 10, bottom: 22 }

/** The frame of a bucket chart: horizontal grid lines with their labels, time labels below. */
function chartFrame(ov, max, format) {
  const { width, height, left, right, top, bottom } = CHART
  const plot = height - top - bottom
  const parts = []
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plot * (1 - fraction)
    parts.push(svg('line', { x1: left, x2: width - right, y1: y, y2: y, class: 'grid' }))
    // the middle line is labelled only where its value is a whole one
    const label = format(max * fraction)
    if (label !== null) parts.push(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'axis', text: label }))
  }
  const n = ov.buckets.length
  const step = (width - left - right) / n
  for (const i of [0, Math.floor(n / 2), n - 1]) {
    const bucket = ov.buckets[i]
    if (!bucket) continue
    const anchor = i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle'
    const x = i === n - 1 ? width - right : left + step * i + (i === 0 ? 0 : step / 2)
    parts.push(svg('text', { x, y: height - 6, 'text-anchor': anchor, class: 'axis', text: bucketLabel(bucket.start, ov.window) }))
  }
  return parts
}

/** Completed and failed runs per bucket, stacked bars. */
function throughputChart(ov) {
  const { width, height, left, right, top, bottom } = CHART
  const plot = height - top - bottom
  const totals = ov.buckets.map((b) => b.completed + b.failed)
  const max = niceMax(Math.max(0, ...totals))
  const step = (width - left - right) / ov.buckets.length
  const y = (v) => top + plot * (1 - v / max)
  const bars = ov.buckets.flatMap((b, i) => {
    const x = left + step * i + step * 0.12
    const w = step * 0.76
    const title = `${formatTime(b.start)}: ${b.completed} completed, ${b.failed} failed`
    const out = []
    if (b.completed) out.push(svg('rect', { x, y: y(b.completed), width: w, height: y(0) - y(b.completed), class: 'completed', title }))
    if (b.failed) out.push(svg('rect', { x, y: y(b.completed + b.failed), width: w, height: y(b.completed) - y(b.completed + b.failed), class: 'failed', title }))
    return out
  })
  const completed = ov.buckets.reduce((sum, b) => sum + b.completed, 0)
  const failed = ov.buckets.reduce((sum, b) => sum + b.failed, 0)
  return svg(
    'svg',
    {
      viewBox: `0 0 ${width} ${height}`,
      class: 'chart',
      role: 'img',
      'aria-label': `${completed} completed and ${failed} failed runs`,
      dataset: { completed: String(completed), failed: String(failed), buckets: String(ov.buckets.length) },
    },
    chartFrame(ov, max, (v) => (Number.isInteger(v) ? String(v) : null)),
    bars,
  )
}

/** failed ÷ (completed + failed) per bucket: a line through the buckets where runs ended. */
function failureChart(ov) {
  const { width, height, left, right, top, bottom } = CHART
  const plot = height - top - bottom
  const step = (width - left - right) / ov.buckets.length
  const points = ov.buckets
    .map((b, i) => ({ b, i, total: b.completed + b.failed }))
    .filter((p) => p.total > 0)
    .map((p) => ({ ...p, rate: p.b.failed / p.total, x: left + step * p.i + step / 2 }))
  const y = (rate) => top + plot * (1 - rate)
  const line = points.length > 1 ? svg('polyline', { points: points.map((p) => `${p.x},${y(p.rate)}`).join(' '), class: 'rate' }) : null
  const dots = points.map((p) =>
    svg('circle', {
      cx: p.x,
      cy: y(p.rate),
      r: 3,
      class: p.rate > 0 ? 'dot failed' : 'dot',
      title: `${formatTime(p.b.start)}: ${Math.round(p.rate * 100)} % (${p.b.failed} of ${p.total} failed)`,
    }),
  )
  const ended = points.reduce((sum, p) => sum + p.total, 0)
  const failed = points.reduce((sum, p) => sum + p.b.failed, 0)
  return svg(
    'svg',
    {
      viewBox: `0 0 ${width} ${height}`,
      class: 'chart',
      role: 'img',
      'aria-label': ended ? `${Math.round((failed / ended) * 100)} % of ${ended} runs failed` : 'no run ended',
      dataset: { rate: ended ? String(failed / ended) : '' },
    },
    chartFrame(ov, 1, (v) => `${Math.round(v * 100)} %`),
    line,
    dots,
  )
}

/** p50 (solid) and p95 (light) of one job as bars on a shared scale, with their values. */
function percentileBar(p, max) {
  if (!p) return el('span', { class: 'muted', text: '—' })
  const width = 120
  const scale = (ms) => Math.max(1, (ms / Math.max(max, 1)) * width)
  return el(
    'span',
    { class: 'pct', dataset: { p50: String(p.p50), p95: String(p.p95) }, title: `p50 ${formatDuration(p.p50)}, p95 ${formatDuration(p.p95)} (${p.count} runs)` },
    svg(
      'svg',
      { viewBox: `0 0 ${width} 12`, width, height: 12, class: 'pct-bar' },
      svg('rect', { x: 0, y: 1, width: width, height: 10, class: 'track' }),
      svg('rect', { x: 0, y: 1, width: scale(p.p95), height: 10, class: 'p95' }),
      svg('rect', { x: 0, y: 1, width: scale(p.p50), height: 10, class: 'p50' }),
    ),
    el('span', { class: 'pct-text', text: `${formatDuration(p.p50)} / ${formatDuration(p.p95)}` }),
  )
}

function renderOverview() {
  const ov = state.overview
  if (!ov) return
  for (const button of $('ov-window').querySelectorAll('button')) button.setAttribute('aria-pressed', String(button.dataset.window === ov.window))
  $('ov-updated').textContent = `at ${formatTime(ov.now)}`
  const total = STATUSES.reduce((sum, s) => sum + (ov.counts[s] || 0), 0)
  const tiles = STATUSES.map((status) =>
    el(
      'button',
      {
        type: 'button',
        class: `tile ${status}`,
        dataset: { status, count: String(ov.counts[status] || 0), testid: 'ov-count' },
        title: `Show the ${status} runs`,
        onclick: () => setFilters({ statuses: [status], job: '', labels: '', id: '' }),
      },
      el('span', { class: 'tile-count', text: String(ov.counts[status] || 0) }),
      el('span', { class: 'tile-name', text: status }),
    ),
  )
  // the share of each status, as one stacked bar
  let x = 0
  const share = svg(
    'svg',
    { viewBox: '0 0 1000 10', preserveAspectRatio: 'none', class: 'share', role: 'img', 'aria-label': `${total} runs by status` },
    STATUSES.map((status) => {
      const w = total ? ((ov.counts[status] || 0) / total) * 1000 : 0
      const rect = w ? svg('rect', { x, y: 0, width: w, height: 10, class: status, title: `${status}: ${ov.counts[status]}` }) : null
      x += w
      return rect
    }),
  )
  $('ov-counts').replaceChildren(el('div', { class: 'tiles' }, tiles), share)
  const oldest = $('ov-oldest')
  if (ov.oldestPending) {
    const p = ov.oldestPending
    oldest.replaceChildren(
      'Oldest pending run: ',
      el('strong', { text: p.jobName }),
      ` waiting for ${formatDuration(p.ageMs)} (since ${formatTime(p.createdAt)}) `,
      runLink(p.runId, 'ov-oldest-run', p.runId.slice(-8)),
    )
    oldest.dataset.runId = p.runId
    oldest.classList.toggle('stale', p.ageMs > 60_000)
  } else {
    oldest.replaceChildren('No run is pending: nothing waits for a worker.')
    delete oldest.dataset.runId
    oldest.classList.remove('stale')
  }
  $('ov-throughput-note').textContent = ov.window === '24h' ? 'per hour, last day' : 'per minute, last hour'
  $('ov-throughput').replaceChildren(throughputChart(ov))
  $('ov-failure').replaceChildren(failureChart(ov))
  const maxLatency = Math.max(0, ...ov.jobs.map((j) => (j.queueLatencyMs ? j.queueLatencyMs.p95 : 0)))
  const maxDuration = Math.max(0, ...ov.jobs.map((j) => (j.durationMs ? j.durationMs.p95 : 0)))
  $('ov-jobs').replaceChildren(
    ...ov.jobs.map((job) => {
      const ended = job.completed + job.failed
      return el(
        'tr',
        { dataset: { job: job.jobName, completed: String(job.completed), failed: String(job.failed) } },
        el(
          'td',
          { class: 'job' },
          el('button', {
            type: 'button',
            class: 'link',
            title: `Show the runs of ${job.jobName}`,
            text: job.jobName,
            onclick: () => setFilters({ statuses: [], job: job.jobName, labels: '', id: '' }),
          }),
        ),
        el('td', { class: 'num', text: String(job.completed) }),
        el('td', { class: `num ${job.failed ? 'bad' : ''}`, text: String(job.failed) }),
        el('td', { class: 'num', text: ended ? `${Math.round((job.failed / ended) * 100)} %` : '—' }),
        el('td', { dataset: { testid: 'ov-latency' } }, percentileBar(job.queueLatencyMs, maxLatency)),
        el('td', { dataset: { testid: 'ov-duration' } }, percentileBar(job.durationMs, maxDuration)),
      )
    }),
  )
  $('ov-jobs-empty').hidden = ov.jobs.length > 0
  const ended = ov.jobs.reduce((sum, j) => sum + j.completed + j.failed, 0)
  $('ov-jobs-note').textContent = ended > ov.sampled ? `percentiles of the newest ${ov.sampled} of ${ended} runs` : ''
}

let overviewRequest = 0
async function loadOverview() {
  const ticket = ++overviewRequest
  try {
    const ov = await api('GET', `/overview?window=${encodeURIComponent(state.window)}`)
    if (ticket !== overviewRequest) return
    state.overview = ov
    showError($('overview-error'), '')
    renderOverview()
    renderJobFilter()
  } catch (error) {
    if (ticket === overviewRequest) showError($('overview-error'), `Cannot load the overview: ${error.message}`)
  }
}

/** Reloads the overview after live events, at most once a second. */
let overviewTimer = null
function scheduleOverview() {
  if (overviewTimer || state.view !== 'overview') return
  overviewTimer = setTimeout(() => {
    overviewTimer = null
    if (state.view === 'overview') loadOverview()
  }, 1000)
}

// ---------- run timeline: a waterfall of attempts and waits (GET /attempts, /waits)

/** What a wait was for, in a word: `delay`, `retry backoff`, `sleep` or `signal`. */
function waitLabel(wait) {
  const timer = timerKind(wait)
  if (!timer) return `wait ${wait.name}`
  switch (timer.kind) {
    case 'delay':
      return 'delay'
    case 'retry':
      return `retry backoff ${timer.step}`
    case 'run-retry':
      return 'run retry backoff'
    default:
      return `sleep ${wait.name}`
  }
}

/** The rows of the timeline: a run's queueing, each attempt and each wait, by start. */
function timelineRows(run, attempts, waits, now) {
  const rows = []
  const delay = waits.find((w) => timerKind(w)?.kind === 'delay')
  const queuedFrom = delay && delay.resolvedAt ? Date.parse(delay.resolvedAt) : Date.parse(run.createdAt)
  if (run.startedAt) {
    rows.push({ kind: 'queue', label: 'queued', start: queuedFrom, end: Date.parse(run.startedAt), status: 'queued', title: 'From trigger (or the end of its delay) to the first start' })
  } else if (!run.isTerminal && run.status === 'pending') {
    rows.push({ kind: 'queue', label: 'queued', start: queuedFrom, end: now, open: true, status: 'queued', title: 'Waiting for a worker' })
  }
  const seen = new Map()
  const lastFailed = new Map() // step name -> end of its last failed attempt
  const retryWaits = new Set(waits.filter((w) => timerKind(w)?.kind === 'retry').map((w) => timerKind(w).step))
  let generation = null
  for (const attempt of attempts) {
    const n = (seen.get(attempt.stepName) || 0) + 1
    seen.set(attempt.stepName, n)
    const running = attempt.status === 'started' && !attempt.interruptionReason
    const outcome = attempt.status === 'started' && attempt.interruptionReason ? attempt.interruptionReason : attempt.status
    const resumed = generation !== null && attempt.leaseGeneration !== generation
    generation = attempt.leaseGeneration
    const start = Date.parse(attempt.startedAt)
    let end = attempt.completedAt ? Date.parse(attempt.completedAt) : null
    if (end === null) end = running ? now : null
    // a retry that waited in the worker (a suspended one has its wait row)
    const failedAt = lastFailed.get(attempt.stepName)
    if (failedAt !== undefined && start > failedAt && !retryWaits.has(attempt.stepName)) {
      rows.push({ kind: 'wait', label: `retry backoff ${attempt.stepName}`, start: failedAt, end: start, status: 'waited', title: `Backoff before attempt ${n} of ${attempt.stepName}` })
    }
    if (outcome === 'failed' && end !== null) lastFailed.set(attempt.stepName, end)
    else lastFailed.delete(attempt.stepName)
    rows.push({
      kind: 'attempt',
      label: n > 1 ? `${attempt.stepName} #${n}` : attempt.stepName,
      start,
      end,
      open: running,
      status: running ? 'running' : outcome,
      resumed,
      generation: attempt.leaseGeneration,
      title: `${attempt.stepName}, attempt ${n}: ${running ? 'running' : outcome}${attempt.error ? ` — ${attempt.error}` : ''} (lease generation ${attempt.leaseGeneration})`,
    })
  }
  for (const wait of waits) {
    if (wait === delay) {
      rows.push({ kind: 'wait', label: 'delay', start: Date.parse(wait.createdAt), end: wait.resolvedAt ? Date.parse(wait.resolvedAt) : now, open: !wait.resolvedAt, status: wait.status === 'pending' ? 'waiting' : 'waited', title: `delayed until ${wait.deadlineAt || '?'}` })
      continue
    }
    const start = Date.parse(wait.suspendedAt || wait.createdAt)
    const pending = wait.status === 'pending'
    const end = wait.resolvedAt ? Date.parse(wait.resolvedAt) : pending && !run.isTerminal ? now : run.completedAt ? Date.parse(run.completedAt) : now
    rows.push({
      kind: 'wait',
      label: waitLabel(wait),
      start,
      end,
      open: pending && !run.isTerminal,
      status: pending ? 'waiting' : 'waited',
      title: `${waitLabel(wait)}: ${wait.outcome ? `${wait.status} by ${wait.outcome}` : wait.status}${wait.deadlineAt ? `, deadline ${wait.deadlineAt}` : ''}`,
    })
  }
  const startOf = (row) => row.start
  rows.sort((a, b) => startOf(a) - startOf(b) || (a.kind === 'queue' ? -1 : 0))
  return rows
}

function renderTimeline() {
  const run = state.detail
  const box = $('detail-timeline')
  if (!run) {
    box.replaceChildren()
    $('timeline-note').textContent = ''
    return
  }
  const now = Date.now()
  const rows = timelineRows(run, state.attempts || [], state.waits || [], now)
  const t0 = Date.parse(run.createdAt)
  const ends = rows.map((r) => r.end ?? r.start)
  const t1 = Math.max(run.completedAt ? Date.parse(run.completedAt) : run.isTerminal ? t0 : now, ...ends, t0 + 1)
  const span = t1 - t0
  $('timeline-note').textContent = `${formatDuration(span)} from trigger to ${run.isTerminal ? 'end' : 'now'}`
  if (!rows.length) {
    box.replaceChildren(el('p', { class: 'muted small', text: run.isTerminal ? 'Nothing ran.' : 'Not started yet.' }))
    return
  }
  const pct = (t) => `${(((t - t0) / span) * 100).toFixed(2)}%`
  // time spent per kind, so that where the time went reads in one line
  const spent = { attempt: 0, wait: 0, queue: 0 }
  for (const row of rows) if (row.end !== null) spent[row.kind] += row.end - row.start
  const items = rows.map((row) => {
    const end = row.end ?? row.start
    const bar = el('span', {
      class: `tl-bar ${row.status}${row.open ? ' open' : ''}${row.end === null ? ' unknown' : ''}`,
      style: `left:${pct(row.start)};width:max(2px, calc(${pct(end)} - ${pct(row.start)}))`,
    })
    return el(
      'li',
      { class: `tl-row ${row.kind}${row.resumed ? ' resumed' : ''}`, title: row.title, dataset: { kind: row.kind, status: row.status, testid: 'timeline-row', ...(row.generation !== undefined ? { generation: String(row.generation) } : {}) } },
      el('span', { class: 'tl-label' }, row.status === 'running' ? el('span', { class: 'tl-now', title: 'Executing now', text: '▶ ' }) : null, row.resumed ? el('span', { class: 'tl-resumed', title: `Claimed again (lease generation ${row.generation}): the run was resumed, possibly on another worker`, text: '↻ ' }) : null, row.label),
      el('span', { class: 'tl-track' }, bar),
      el('span', { class: 'tl-dur', text: row.end === null ? '?' : `${formatDuration(end - row.start)}${row.open ? '…' : ''}` }),
    )
  })
  const axis = el(
    'li',
    { class: 'tl-row tl-axis' },
    el('span', { class: 'tl-label' }),
    el('span', { class: 'tl-track' }, el('span', { class: 'tl-tick start', text: '0' }), el('span', { class: 'tl-tick end', text: `+${formatDuration(span)}` })),
    el('span', { class: 'tl-dur' }),
  )
  box.replaceChildren(
    el('p', { class: 'tl-summary small muted', dataset: { testid: 'timeline-summary' } }, `steps ${formatDuration(spent.attempt)} · waits ${formatDuration(spent.wait)} · queued ${formatDuration(spent.queue)}`),
    el('ol', { class: 'tl' }, ...items, axis),
  )
}

/** While a run is open and not over, its open bars grow: redraw each second. */
setInterval(() => {
  if (state.detail && !state.detail.isTerminal && !$('detail').hidden) renderTimeline()
}, 1000)

// ---------- wiring

function applyUrl() {
  readUrl()
  state.limit = PAGE
  bulk.reset()
  connectRuns()
  loadRuns()
  if (state.selected) openRun(state.selected, false)
  else closeRun(false)
  showView(state.view)
}

$('filter-status').addEventListener('change', () => {
  const ticked = [...$('filter-status').querySelectorAll('input:checked')].map((box) => box.value)
  setFilters({ statuses: STATUSES.filter((s) => ticked.includes(s)) })
})
$('filter-job').addEventListener('change', (e) => setFilters({ job: e.target.value }))
$('filter-labels').addEventListener('change', (e) => setFilters({ labels: e.target.value }))
$('filter-id').addEventListener('change', (e) => setFilters({ id: e.target.value.trim() }))
$('filters').addEventListener('submit', (e) => e.preventDefault())
$('filter-range').addEventListener('change', (e) => setFilters({ range: e.target.value }))
$('filter-clear').addEventListener('click', () => setFilters(NO_FILTERS()))
$('load-more').addEventListener('click', () => {
  state.limit += PAGE
  loadRuns()
})
$('detail-close').addEventListener('click', () => closeRun())
$('tab-overview').addEventListener('click', () => setView('overview'))
$('tab-runs').addEventListener('click', () => setView('runs'))
$('ov-window').addEventListener('click', (e) => {
  const chosen = e.target.closest('button')?.dataset.window
  if (!chosen || chosen === state.window) return
  state.window = chosen
  writeUrl(false)
  loadOverview()
})
$('action-cancel').addEventListener('click', () => runAction('cancel'))
$('action-resume').addEventListener('click', () => runAction('resume'))
$('action-wake').addEventListener('click', () => runAction('wake'))
$('action-retrigger').addEventListener('click', () => runAction('retrigger'))
$('action-delete').addEventListener('click', () => runAction('delete'))
$('trigger-job').addEventListener('change', () => {
  showError($('trigger-error'), '')
  renderForm()
})
$('raw-input').addEventListener('input', (e) => {
  e.target.dataset.edited = '1'
})
$('trigger-form').addEventListener('submit', submitTrigger)
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && state.selected && !confirmDialog.open) closeRun()
})
window.addEventListener('popstate', applyUrl)

applyUrl()
loadJobs()
loadSchedules()
// Next and last fire times move on by themselves: read them again now and then.
setInterval(loadSchedules, 15_000)
// The overview's buckets move on with the clock, and events may be filtered out: read it again now and then.
setInterval(() => {
  if (state.view === 'overview' && !document.hidden) loadOverview()
}, 15_000)
