import type { StepContext } from './durably.js'

/** What a job's `run` receives as `step`: `run(name, fn)`, `progress(current, total?, message?)`, `log`. */
export type Step = StepContext

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
