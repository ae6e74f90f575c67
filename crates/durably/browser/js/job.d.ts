/** What a job's `run` receives as `step`. */
export interface Step {
  readonly runId: string
  /** Runs `fn` on the first execution; resolves to its stored output on every later one. */
  run<T>(name: string, fn: () => T | Promise<T>): Promise<T>
  progress(current: number, total?: number, message?: string): Promise<void>
  readonly log: {
    info(message: string, data?: unknown): Promise<void>
    warn(message: string, data?: unknown): Promise<void>
    error(message: string, data?: unknown): Promise<void>
  }
}

/** A job: its name and `run(step, input)`; `retry` (durably's own) runs a failed run again. */
export interface JobDefinition<TName extends string = string, TInput = unknown, TOutput = unknown> {
  name: TName
  run: (step: Step, input: TInput) => TOutput | Promise<TOutput>
  retry?: { maxAttempts: number; delayMs?: number }
}

/** Returns `definition` after checking its shape; import it from the page and the worker alike. */
export function defineJob<TName extends string, TInput, TOutput>(
  definition: JobDefinition<TName, TInput, TOutput>,
): JobDefinition<TName, TInput, TOutput>
