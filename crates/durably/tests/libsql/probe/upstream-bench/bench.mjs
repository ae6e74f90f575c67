// One-step jobs per second of the published @coji/durably 0.15.0 on a local libSQL file
// (@libsql/kysely-libsql), the shape of `durably bench --workload throughput-1step`: JOBS runs
// triggered in batches of 100, then one worker with maxConcurrentRuns = CONCURRENCY drains them;
// the time from the worker's start to the last completion. Prints one JSON line.
//
// Usage: node bench.mjs [JOBS=2000] [CONCURRENCY=8]
import { createDurably, defineJob } from '@coji/durably'
import { LibsqlDialect } from '@libsql/kysely-libsql'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { z } from 'zod'

const jobs = Number(process.argv[2] ?? 2000)
const concurrency = Number(process.argv[3] ?? 8)
const dir = mkdtempSync(join(tmpdir(), 'durably-upstream-bench-'))
const url = `file:${join(dir, 'bench.db')}`

const oneStep = defineJob({
  name: 'one-step',
  input: z.object({ n: z.number() }),
  run: async (step, input) => step.run('only', async () => input.n),
})

const durably = createDurably({
  dialect: new LibsqlDialect({ url }),
  maxConcurrentRuns: concurrency,
  pollingIntervalMs: 10,
}).register({ oneStep })
await durably.migrate()

for (let from = 0; from < jobs; from += 100) {
  const batch = []
  for (let n = from; n < Math.min(from + 100, jobs); n++) batch.push({ input: { n } })
  await durably.jobs.oneStep.batchTrigger(batch)
}

let completed = 0
let failed = 0
const done = new Promise((resolve) => {
  durably.on('run:complete', () => {
    completed++
    if (completed + failed === jobs) resolve()
  })
  durably.on('run:fail', () => {
    failed++
    if (completed + failed === jobs) resolve()
  })
})
const started = performance.now()
durably.start()
await done
const seconds = (performance.now() - started) / 1000
await durably.stop()
await durably.db.destroy()
rmSync(dir, { recursive: true, force: true })
console.log(
  JSON.stringify({
    runtime: '@coji/durably 0.15.0',
    backend: 'libsql (local file)',
    workload: 'throughput-1step',
    jobs,
    concurrency,
    completed,
    failed,
    seconds: Number(seconds.toFixed(3)),
    jobs_per_sec: Math.round(completed / seconds),
    rss_mb: Math.round(process.memoryUsage().rss / 1e6),
  }),
)
