// The published TypeScript @coji/durably 0.15.0 sharing a database with the Rust runtime, for
// tests/interop.rs: PostgreSQL (kysely PostgresDialect, node-postgres) or a SQLite file
// (SqliteDialect, better-sqlite3).
//
// Usage: node interop.mjs COMMAND DATABASE SCHEMA [ARGS...]; prints one JSON value on stdout.
// DATABASE is a postgres:// URL (SCHEMA: the schema to work in) or a SQLite file (SCHEMA: -).
//   migrate          migrate the schema (a no-op on a schema the Rust runtime migrated)
//   trigger N        trigger N runs of `interop-double` (inputs {n: 0..N-1}, label from=typescript)
//   work             process runs with processOne until none is claimable; prints how many and
//                    which steps it executed ([n, step name] of the `interop-keyed-*` jobs)
//   read ID...       the runs (getRun) and their steps (storage.getSteps)
//   labelled K V     the ids of the runs labelled K=V (getRuns with a labels filter), sorted
//   cancel ID        cancel a run
//   crash            process one run of `interop-crash` with a 500 ms lease, and exit (code 3)
//                    inside its second step, as a crashed worker would
import { createDurably, defineJob } from '@coji/durably'
import { PostgresDialect, SqliteDialect } from 'kysely'
import { z } from 'zod'

const [command, database, schema, ...args] = process.argv.slice(2)
if (!command || !database || !schema) {
  console.error('usage: node interop.mjs COMMAND DATABASE SCHEMA [ARGS...]')
  process.exit(2)
}

let dialect
let close
if (/^postgres(ql)?:/.test(database)) {
  const { default: pg } = await import('pg')
  const pool = new pg.Pool({
    connectionString: database,
    options: `-c search_path=${schema}`,
    max: 4,
  })
  dialect = new PostgresDialect({ pool })
  close = () => pool.end()
} else {
  const { default: Database } = await import('better-sqlite3')
  const sqlite = new Database(database, { timeout: 10000 })
  dialect = new SqliteDialect({ database: sqlite })
  close = () => sqlite.close()
}

// The same job as the Rust side of the test: two steps, progress, a typed output saying which
// runtime executed it.
const doubleJob = defineJob({
  name: 'interop-double',
  input: z.object({ n: z.number() }),
  output: z.object({ doubled: z.number(), by: z.string() }),
  run: async (step, input) => {
    const doubled = await step.run('double', async () => input.n * 2)
    const by = await step.run('sign', async () => 'typescript')
    step.progress(2, 2, 'signed')
    return { doubled, by }
  },
})

// Ten jobs `interop-keyed-0..9` run with concurrency keys shared by both runtimes: two 30 ms
// steps, and the execution's start and end (ms since the epoch) in the output.
const executed = []
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const keyedJobs = {}
for (let i = 0; i < 10; i++) {
  keyedJobs[`keyed${i}`] = defineJob({
    name: `interop-keyed-${i}`,
    input: z.object({ n: z.number() }),
    output: z.object({ by: z.string(), started: z.number(), ended: z.number() }),
    run: async (step, input) => {
      const started = Date.now()
      for (const name of ['first', 'second']) {
        await step.run(name, async () => {
          executed.push([input.n, name])
          await pause(30)
          return name
        })
      }
      return { by: 'typescript', started, ended: Date.now() }
    },
  })
}

// A job whose second step kills the process: its first step's result is stored, its lease is
// left to expire.
const crashJob = defineJob({
  name: 'interop-crash',
  input: z.object({ n: z.number() }),
  output: z.object({ first: z.string(), second: z.string() }),
  run: async (step) => {
    const first = await step.run('first', async () => 'first by typescript')
    const second = await step.run('second', async () => process.exit(3))
    return { first, second }
  },
})

const durably = createDurably({
  dialect,
  preserveSteps: true,
  // Short only for the crash: the other commands' runs must not outlive their leases.
  ...(command === 'crash' ? { leaseMs: 500 } : {}),
}).register({ doubleJob, crashJob, ...keyedJobs })

let result
try {
  await durably.migrate()
  switch (command) {
    case 'migrate':
      result = { migrated: true }
      break
    case 'trigger': {
      const ids = []
      for (let n = 0; n < Number(args[0]); n++) {
        const run = await durably.jobs.doubleJob.trigger({ n }, { labels: { from: 'typescript' } })
        ids.push(run.id)
      }
      result = ids
      break
    }
    case 'work': {
      let processed = 0
      while (await durably.processOne({ workerId: 'typescript-worker' })) processed++
      result = { processed, executed }
      break
    }
    case 'read':
      result = await Promise.all(
        args.map(async (id) => ({
          run: await durably.getRun(id),
          steps: await durably.storage.getSteps(id),
        })),
      )
      break
    case 'labelled': {
      const runs = await durably.getRuns({ labels: { [args[0]]: args[1] } })
      // Sorted here: upstream orders by created_at alone (no tie-breaker, SPEC §3 quirk 15).
      result = runs.map((run) => run.id).sort()
      break
    }
    case 'cancel':
      await durably.cancel(args[0])
      result = { cancelled: args[0] }
      break
    case 'crash':
      await durably.processOne({ workerId: 'typescript-crashing-worker' })
      throw new Error('the crash job did not crash')
    default:
      throw new Error(`unknown command ${command}`)
  }
} finally {
  await close()
}
console.log(JSON.stringify(result))
