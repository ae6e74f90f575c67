// The jobs of the in-browser demo (durably demo's /browser), in JavaScript: they run in the
// page's dedicated Web Worker (worker.js), on the engine compiled to WebAssembly. They mirror
// reference jobs of `durably demo` (`steps`, `flaky`), under the same names.
import { defineJob } from '/browser/pkg/job.js'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function whole(input, field, min, max, fallback) {
  const value = input?.[field] ?? fallback
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${field} must be a whole number from ${min} to ${max} (got ${JSON.stringify(value)})`)
  }
  return value
}

// `count` steps `step-{i}`, each sleeping `stepMs`; step `failAt` throws. After each step:
// progress and a log entry. Output: the sum 1 + ... + count.
export const steps = defineJob({
  name: 'steps',
  run: async (step, input) => {
    const count = whole(input, 'count', 1, 1000)
    const stepMs = whole(input, 'stepMs', 0, 60000, 0)
    const failAt = input?.failAt ?? null
    let sum = 0
    for (let i = 1; i <= count; i++) {
      sum += await step.run(`step-${i}`, async () => {
        await sleep(stepMs)
        if (i === failAt) throw new Error(`failed at step ${i}`)
        return i
      })
      await step.progress(i, count, `step ${i}/${count}`)
      await step.log.info(`step ${i} done`, { i })
    }
    return { sum }
  },
})

// Fails its first `failTimes` attempts; the run is executed again up to 3 attempts in all, one
// second apart (`retry`). The steps `attempt-{n}` of earlier attempts are replayed from SQLite
// (their functions do not run again), so the first whose function runs tells this attempt.
export const flaky = defineJob({
  name: 'flaky',
  retry: { maxAttempts: 3, delayMs: 1000 },
  run: async (step, input) => {
    const failTimes = whole(input, 'failTimes', 0, 20)
    let attempt = 0
    let fresh = false
    while (!fresh) {
      const n = ++attempt
      await step.run(`attempt-${n}`, () => {
        fresh = true
        return n
      })
    }
    await step.log.info(`attempt ${attempt}`, { attempt })
    await step.run('flaky', () => {
      if (attempt <= failTimes) throw new Error(`attempt ${attempt} failed`)
      return attempt
    })
    return { attempts: attempt }
  },
})
