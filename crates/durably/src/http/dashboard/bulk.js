// durably dashboard: bulk actions on the runs list. Runs are picked one by one (a checkbox per
// row, one for the page) or all at once ("Select all matching": every run the filters match,
// read page by page through GET /runs, the newest BULK_LIMIT at most); then Cancel, Retrigger or
// Delete asks for confirmation (how many runs, how many are skipped and why) and calls the
// per-run routes (POST /cancel, POST /retrigger, DELETE /run) a few at a time, so that the
// router's auth hooks decide for every run as they do for one. Runs an action does not apply to
// (cancel of a finished run, retrigger or delete of one that is not finished) are skipped and
// counted, as are those the server finds already changed (409) or gone (404); other errors are
// counted as failed, with their messages.

/** The most runs "Select all matching" selects (the newest first). */
export const BULK_LIMIT = 1000
/** Runs read per request while selecting all matching. */
const BULK_PAGE = 200
/** Requests in flight at once while acting. */
const PARALLEL = 4

const FINISHED = ['completed', 'failed', 'cancelled']

/** What each action does, to which runs, and how its outcome reads. */
const ACTIONS = {
  cancel: {
    applies: (status) => !FINISHED.includes(status),
    request: (id) => ['POST', `/cancel?runId=${encodeURIComponent(id)}`],
    verb: 'Cancel',
    done: 'cancelled',
    skips: 'already finished',
    ongoing: 'Cancelling',
    question: (n, applied, skipped) =>
      `Cancel ${runs(n)}? ${count(applied, 'pending, leased or waiting run')} will be cancelled (a running step is aborted).` +
      (skipped ? ` ${count(skipped, 'run')} already finished ${skipped === 1 ? 'is' : 'are'} skipped.` : ''),
  },
  retrigger: {
    applies: (status) => FINISHED.includes(status),
    request: (id) => ['POST', `/retrigger?runId=${encodeURIComponent(id)}`],
    verb: 'Retrigger',
    done: 'retriggered',
    skips: 'not finished',
    ongoing: 'Retriggering',
    question: (n, applied, skipped) =>
      `Retrigger ${runs(n)}? ${count(applied, 'finished run')} each get${applied === 1 ? 's' : ''} a new run with the same input.` +
      (skipped ? ` ${count(skipped, 'run')} not finished (pending, leased or waiting) ${skipped === 1 ? 'is' : 'are'} skipped.` : ''),
  },
  delete: {
    applies: (status) => FINISHED.includes(status),
    request: (id) => ['DELETE', `/run?runId=${encodeURIComponent(id)}`],
    verb: 'Delete',
    done: 'deleted',
    skips: 'not finished',
    ongoing: 'Deleting',
    question: (n, applied, skipped) =>
      `Delete ${runs(n)}? ${count(applied, 'finished run')} ${applied === 1 ? 'is' : 'are'} deleted with ${applied === 1 ? 'its' : 'their'} steps and logs; this cannot be undone.` +
      (skipped ? ` ${count(skipped, 'run')} not finished (pending, leased or waiting) ${skipped === 1 ? 'is' : 'are'} skipped.` : ''),
  },
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? '' : 's'}`
}

function runs(n) {
  return count(n, 'run')
}

/**
 * The bulk actions of the runs list. `ctx`: the page's `api`, `el` and `$` helpers, its
 * `confirmAction(text)`, `listed()` (the runs shown), `query()` (the list's filter as
 * URLSearchParams) and `reload()` (reads the list again).
 */
export function createBulk(ctx) {
  const { api, el, $ } = ctx
  /** id -> status of the selected runs (statuses follow the listing while shown). */
  const picked = new Map()
  /** 'page' (picked by hand) or 'all' (every run matching, `more`: beyond BULK_LIMIT). */
  let scope = { kind: 'page', more: false }
  let busy = false
  /** Bumped by reset(): a "select all" still reading is then dropped. */
  let generation = 0

  function render() {
    const shown = ctx.listed()
    for (const run of shown) if (picked.has(run.id)) picked.set(run.id, run.status)
    $('bulk').hidden = shown.length === 0 && picked.size === 0
    const n = picked.size
    const countText =
      scope.kind === 'all'
        ? scope.more
          ? `The newest ${n} runs matching the filters are selected (more match: narrow the filters to reach them)`
          : `All ${runs(n)} matching the filters ${n === 1 ? 'is' : 'are'} selected`
        : n
          ? `${runs(n)} selected`
          : 'Select runs to act on them'
    const label = $('bulk-count')
    label.textContent = countText
    label.dataset.count = String(n)
    label.dataset.scope = scope.kind
    for (const kind of Object.keys(ACTIONS)) $(`bulk-${kind}`).disabled = busy || n === 0
    $('bulk-all').disabled = busy
    $('bulk-none').hidden = n === 0
    for (const box of $('runs').querySelectorAll('input[data-testid="pick"]')) box.checked = picked.has(box.value)
    const page = $('pick-page')
    const onPage = shown.filter((run) => picked.has(run.id)).length
    page.checked = shown.length > 0 && onPage === shown.length
    page.indeterminate = onPage > 0 && onPage < shown.length
    page.disabled = busy || shown.length === 0
  }

  function checkbox(run) {
    return el('input', {
      type: 'checkbox',
      value: run.id,
      checked: picked.has(run.id),
      disabled: busy,
      'aria-label': `Select run ${run.id}`,
      dataset: { testid: 'pick' },
      onchange: (event) => {
        if (event.target.checked) picked.set(run.id, run.status)
        else picked.delete(run.id)
        scope = { kind: 'page', more: false }
        render()
      },
    })
  }

  function reset() {
    generation++
    picked.clear()
    scope = { kind: 'page', more: false }
    showResult('')
    if (!busy) render()
  }

  function showResult(text, counts) {
    const node = $('bulk-result')
    node.textContent = text
    node.hidden = !text
    for (const key of ['done', 'skipped', 'failed', 'action']) delete node.dataset[key]
    if (counts) Object.assign(node.dataset, counts)
  }

  /** Every run matching the filters, newest first, BULK_LIMIT at most: pages read with the same
   * filter, bounded above by the newest run's creation so that runs created meanwhile do not
   * shift the pages (a run seen twice counts once). */
  async function selectAll() {
    const mine = ++generation
    const base = ctx.query()
    const found = new Map()
    let before = null
    let more = false
    $('bulk-all').disabled = true
    showResult('Reading the runs matching the filters…')
    try {
      for (let offset = 0; found.size < BULK_LIMIT; offset += BULK_PAGE) {
        const params = new URLSearchParams(base)
        if (before) params.set('createdBefore', before)
        params.set('limit', String(BULK_PAGE))
        params.set('offset', String(offset))
        const page = await api('GET', `/runs?${params}`)
        if (mine !== generation) return
        if (offset === 0 && page.length) {
          const newest = Date.parse(page[0].createdAt) + 1
          const asked = base.get('createdBefore')
          before = new Date(asked ? Math.min(newest, Date.parse(asked)) : newest).toISOString()
        }
        for (const run of page) {
          if (found.size >= BULK_LIMIT) {
            more = true
            break
          }
          found.set(run.id, run.status)
        }
        if (page.length < BULK_PAGE) break
        if (found.size >= BULK_LIMIT) {
          // one more run past the bound says whether more match
          params.set('limit', '1')
          params.set('offset', String(offset + BULK_PAGE))
          more = more || (await api('GET', `/runs?${params}`)).length > 0
          if (mine !== generation) return
        }
      }
      picked.clear()
      for (const [id, status] of found) picked.set(id, status)
      scope = { kind: 'all', more }
      showResult('')
    } catch (error) {
      if (mine === generation) showResult(`Cannot read the runs matching the filters: ${error.message}`, { failed: '1' })
    } finally {
      if (mine === generation) render()
    }
  }

  async function act(kind) {
    const action = ACTIONS[kind]
    const chosen = [...picked]
    const targets = chosen.filter(([, status]) => action.applies(status)).map(([id]) => id)
    const skippedByStatus = chosen.length - targets.length
    $('confirm').dataset.kind = `bulk-${kind}`
    const yes = await ctx.confirmAction(action.question(chosen.length, targets.length, skippedByStatus))
    delete $('confirm').dataset.kind
    if (!yes) return
    busy = true
    render()
    let done = 0
    let skipped = skippedByStatus
    const failures = []
    let next = 0
    const progress = () => showResult(`${action.ongoing}… ${done + skipped - skippedByStatus + failures.length} / ${targets.length}`)
    progress()
    const worker = async () => {
      while (next < targets.length) {
        const id = targets[next++]
        const [method, path] = action.request(id)
        try {
          await api(method, path)
          done++
        } catch (error) {
          // changed since it was listed (409) or gone (404): the action no longer applies
          if (/\(HTTP (409|404)\)$/.test(error.message)) skipped++
          else failures.push(`${id}: ${error.message}`)
        }
        progress()
      }
    }
    try {
      await Promise.all(Array.from({ length: Math.min(PARALLEL, targets.length) }, worker))
    } finally {
      busy = false
    }
    const summary =
      `${action.verb}: ${count(done, 'run')} ${action.done}, ${skipped} skipped` +
      (skipped ? ` (${action.skips}${skipped > skippedByStatus ? ', or changed meanwhile' : ''})` : '') +
      `, ${failures.length} failed.` +
      (failures.length ? ` ${failures.slice(0, 3).join('; ')}${failures.length > 3 ? '; …' : ''}` : '')
    generation++
    picked.clear()
    scope = { kind: 'page', more: false }
    showResult(summary, { action: kind, done: String(done), skipped: String(skipped), failed: String(failures.length) })
    render()
    ctx.reload()
  }

  $('pick-page').addEventListener('change', (event) => {
    for (const run of ctx.listed()) {
      if (event.target.checked) picked.set(run.id, run.status)
      else picked.delete(run.id)
    }
    scope = { kind: 'page', more: false }
    render()
  })
  $('pick-page').closest('th').addEventListener('click', (event) => event.stopPropagation())
  $('bulk-all').addEventListener('click', selectAll)
  $('bulk-none').addEventListener('click', reset)
  for (const kind of Object.keys(ACTIONS)) $(`bulk-${kind}`).addEventListener('click', () => act(kind))

  return { render, checkbox, reset }
}
