// The in-browser demo's dedicated Web Worker: durably (the engine compiled to WebAssembly) on
// SQLite in the origin's OPFS, running the jobs of jobs.js; the page talks to it through
// connectDurably (page.js). A short lease, so that a run cut by a reload resumes soon.
import { startDurablyWorker } from '/browser/pkg/worker.js'
import { flaky, steps } from '/browser/jobs.js'

startDurablyWorker({ opfs: 'durably-demo', leaseMs: 2000, pollingIntervalMs: 100, jobs: { steps, flaky } })
