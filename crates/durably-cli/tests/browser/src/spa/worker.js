// The dedicated worker of the SPA test page: durably on OPFS (the database named by `?db=`),
// with a short lease so that a run interrupted by a reload resumes quickly.
import { startDurablyWorker } from 'durably-browser/worker'
import { quick, resumable } from './jobs.js'

const db = new URL(self.location.href).searchParams.get('db') || 'spa-test'
// `?db=memory`: an in-memory database (for comparing figures).
startDurablyWorker({ opfs: db === 'memory' ? undefined : db, leaseMs: 1500, pollingIntervalMs: 50, jobs: { resumable, quick } })
