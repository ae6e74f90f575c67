import type { Durably, InitInput } from './durably.js'
import type { JobDefinition } from './job.js'

export interface DurablyWorkerOptions {
  /** A database name in the origin's private file system (kept across reloads); none: in memory. */
  opfs?: string
  pollingIntervalMs?: number
  /** How long a run's lease lasts: after a reload, the run resumes once it expired. */
  leaseMs?: number
  preserveSteps?: boolean
  /** The jobs this worker runs, by any key (each registered under its `name`). */
  jobs?: Record<string, JobDefinition<string, any, any>>
  /** Where the `.wasm` is (default: `durably_bg.wasm` next to `durably.js`). */
  wasm?: InitInput
  /** How long to retry opening the database a previous page's worker still holds (default 10000). */
  openTimeoutMs?: number
}

/**
 * Starts durably in this dedicated Web Worker: loads the WebAssembly, opens the database,
 * registers `jobs`, migrates and starts the worker loop, then answers `connectDurably(worker)`
 * on the page. Resolves to the instance.
 */
export function startDurablyWorker(options?: DurablyWorkerOptions): Promise<Durably>
