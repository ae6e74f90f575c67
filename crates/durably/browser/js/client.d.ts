import type { JobDefinition } from './job.js'

/** A run as upstream's JSON (camelCase). */
export interface Run<TOutput = unknown> {
  id: string
  jobName: string
  status: 'pending' | 'leased' | 'waiting' | 'completed' | 'failed' | 'cancelled'
  input: unknown
  output: TOutput | null
  error: string | null
  progress: { current: number; total?: number; message?: string } | null
  labels: Record<string, string>
  [field: string]: unknown
}

export interface TriggerOptions {
  idempotencyKey?: string
  concurrencyKey?: string
  labels?: Record<string, string>
  coalesce?: 'skip' | 'queue' | 'active'
  priority?: number
}

export interface RunFilter {
  status?: Run['status'] | Run['status'][]
  jobName?: string | string[]
  labels?: Record<string, string>
  limit?: number
  offset?: number
}

/** An event as upstream's JSON: `type`, `runId`, `jobName`, ... */
export interface DurablyEvent {
  type: string
  [field: string]: any
}

export interface JobHandle<TInput = unknown, TOutput = unknown> {
  name: string
  trigger(input: TInput, options?: TriggerOptions): Promise<Run<TOutput> & { disposition: string }>
  /** Items are inputs or `{ input, options }`; one transaction. */
  batchTrigger(items: (TInput | { input: TInput; options?: TriggerOptions })[]): Promise<(Run<TOutput> & { disposition: string })[]>
  getRun(id: string): Promise<Run<TOutput> | null>
  getRuns(filter?: Omit<RunFilter, 'jobName'>): Promise<Run<TOutput>[]>
}

/** The page's view of the worker's instance, as the `@coji/durably-react/spa` hooks use it. */
export interface DurablyClient<TJobs = {}> {
  /** The handles registered through `register` on this client's chain, by key. */
  jobs: TJobs
  /**
   * Calls `listener` for each event of `type`; returns the function that unsubscribes it (once
   * no listener of `type` remains, the worker stops forwarding that type).
   */
  on(type: string, listener: (event: DurablyEvent) => void): () => void
  /** Handles of jobs the worker registered, by key (the jobs run in the worker). */
  register<T extends Record<string, JobDefinition<string, any, any>>>(
    definitions: T,
  ): DurablyClient<
    TJobs & {
      [K in keyof T]: T[K] extends JobDefinition<string, infer I, infer O> ? JobHandle<I, O> : JobHandle
    }
  >
  trigger(jobName: string, input: unknown, options?: TriggerOptions): Promise<Run & { disposition: string }>
  getRun(id: string): Promise<Run | null>
  getRuns(filter?: RunFilter): Promise<Run[]>
  cancel(id: string): Promise<void>
  retrigger(id: string): Promise<Run>
  deleteRun(id: string): Promise<void>
}

/**
 * Connects to a worker running `startDurablyWorker`; resolves once its instance has started.
 * If the worker fails (an uncaught error: its script did not load, or the engine trapped), the
 * calls still waiting reject saying so, and so does every later call.
 */
export function connectDurably(worker: Worker): Promise<DurablyClient>
