// The SPA test page: the published @coji/durably-react SPA hooks against durably-browser's
// client (the engine runs in ./worker.js). `?db=` names the OPFS database.
import { useState } from 'react'
import { createRoot } from 'react-dom/client'
import { DurablyProvider, useJob, useRuns } from '@coji/durably-react/spa'
import { connectDurably } from 'durably-browser'
import { quick, resumable } from './jobs.js'

const params = new URLSearchParams(location.search)
const db = params.get('db') || 'spa-test'
// `?only=quick`: the quick job alone (no useRuns refreshing on every event), for the figures.
const onlyQuick = params.get('only') === 'quick'
const worker = new Worker(`./worker.js?db=${encodeURIComponent(db)}`, { type: 'module' })
const durably = connectDurably(worker)
// For the figures (spa.mjs): the client itself, once connected.
durably.then((client) => {
  window.__durably = client
  window.__quick = client.register({ quick }).jobs.quick
})

function Resumable() {
  const job = useJob(resumable)
  const { runs } = useRuns(resumable, { pageSize: 5 })
  const [error, setError] = useState('')
  const progress = job.progress ? `${job.progress.current}/${job.progress.total} ${job.progress.message ?? ''}` : ''
  return (
    <section>
      <button id="trigger" onClick={() => job.trigger({ start: 0 }).catch((e) => setError(String(e)))}>
        run
      </button>
      <p>status: <span id="status">{job.status ?? ''}</span></p>
      <p>run: <span id="run-id">{job.currentRunId ?? ''}</span></p>
      <p>progress: <span id="progress">{progress}</span></p>
      <p>output: <span id="output">{job.output ? JSON.stringify(job.output) : ''}</span></p>
      <p>error: <span id="error">{error || job.error || ''}</span></p>
      <ul id="logs">{job.logs.map((log) => <li key={log.id}>{log.message}</li>)}</ul>
      <ul id="runs">{runs.map((run) => <li key={run.id}>{`${run.id} ${run.status}`}</li>)}</ul>
    </section>
  )
}

function QuickFirst() {
  const job = useJob(quick)
  return (
    <section>
      <button id="quick" onClick={() => job.trigger({ n: 7 })}>quick</button>
      <p>quick: <span id="quick-status">{job.status ?? ''}</span></p>
    </section>
  )
}

createRoot(document.getElementById('root')).render(
  <DurablyProvider durably={durably} fallback={<p id="loading">loading</p>}>
    {onlyQuick ? null : <Resumable />}
    <QuickFirst />
  </DurablyProvider>,
)
