// The in-browser demo's page: plain DOM over durably-browser's client (connectDurably), whose
// calls and events go to the engine in worker.js.
import { connectDurably } from '/browser/pkg/client.js'

const engine = document.getElementById('engine')
const tbody = document.getElementById('runs')
const logs = new Map() // run id -> last log message seen on this page

const worker = new Worker('/browser/worker.js', { type: 'module' })
let client
try {
  client = await connectDurably(worker)
} catch (error) {
  engine.className = 'failed'
  engine.textContent = `The engine did not start: ${error.message}`
  throw error
}
engine.textContent = 'Engine ready: durably (WebAssembly) in a Web Worker, SQLite on OPFS (database "durably-demo").'
engine.dataset.ready = 'true'

let queued = false
async function refresh() {
  if (queued) return
  queued = true
  await new Promise((resolve) => setTimeout(resolve, 50))
  queued = false
  const runs = await client.getRuns({ limit: 15 })
  tbody.replaceChildren(...runs.map(row))
}

function cell(className, ...content) {
  const td = document.createElement('td')
  td.className = className
  td.append(...content)
  return td
}

function row(run) {
  const tr = document.createElement('tr')
  tr.dataset.run = run.id
  tr.dataset.status = run.status
  const progress = run.progress
  const bar = document.createElement('progress')
  if (progress?.total) {
    bar.max = progress.total
    bar.value = progress.current
  }
  const result = run.status === 'failed' ? run.error : run.output == null ? '' : JSON.stringify(run.output)
  tr.append(
    cell('id', run.id.slice(-8)),
    cell('job', run.jobName),
    cell('status', run.status),
    cell('progress', ...(progress ? [bar, ` ${progress.message ?? `${progress.current}/${progress.total ?? '?'}`}`] : [])),
    cell('result', result ?? ''),
    cell('logs', logs.get(run.id) ?? ''),
  )
  return tr
}

client.on('log:write', (event) => {
  logs.set(event.runId, event.message)
  refresh()
})
for (const type of ['run:trigger', 'run:leased', 'run:progress', 'run:complete', 'run:fail', 'run:cancel', 'run:delete']) {
  client.on(type, refresh)
}

const number = (id) => {
  const value = document.getElementById(id).value
  return value === '' ? undefined : Number(value)
}
function onSubmit(formId, trigger) {
  document.getElementById(formId).addEventListener('submit', async (event) => {
    event.preventDefault()
    try {
      await trigger()
    } catch (error) {
      engine.className = 'failed'
      engine.textContent = `trigger failed: ${error.message}`
    }
    refresh()
  })
}
onSubmit('steps-form', () =>
  client.trigger('steps', { count: number('steps-count'), stepMs: number('steps-ms'), failAt: number('steps-fail') }),
)
onSubmit('flaky-form', () => client.trigger('flaky', { failTimes: number('flaky-fail') }))
for (const button of document.querySelectorAll('button')) button.disabled = false
await refresh()
// For tests and the curious: the client and its worker in the console.
window.durably = client
window.durablyWorker = worker
