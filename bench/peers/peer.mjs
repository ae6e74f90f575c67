// One run of durably bench's `throughput-1step` workload on a peer queue (issue 27):
// enqueue N one-job-one-trivial-async-call jobs with a producer of their own, close it, then
// drain them with concurrency C, and print one JSON line like `durably bench --backend postgres`.
//
//   node peer.mjs --system graphile|pgboss --mode default|batched --jobs N --concurrency C \
//     --db postgres://postgres@127.0.0.1:5432/durably_bench
//
// The server's counters (pg_stat_database, pg_stat_wal) are read as durably bench reads them
// (crates/durably-cli/src/bench/server_stats.rs), by the probe of common.mjs: after the
// producer's connections and after the worker's connections have closed (a backend publishes its
// pending statistics when it exits), minus the probe's own transactions. Database- and
// server-wide: other activity on the server is counted too.
import pg from "pg";
import { Probe, installedVersion, peakRssMb, resetPeakRss, round, sleep } from "./common.mjs";

function parseArgs(argv) {
  const args = { system: "", mode: "default", jobs: 2000, concurrency: 8, db: "" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in args)) throw new Error(`unknown option ${argv[i]}`);
    args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!["graphile", "pgboss"].includes(args.system)) throw new Error("--system graphile|pgboss");
  if (!["default", "batched"].includes(args.mode)) throw new Error("--mode default|batched");
  if (!args.db) throw new Error("--db postgres://user@host:port/database");
  return args;
}

/** The drain gives up after 10 minutes, as durably bench does. */
const DRAIN_TIMEOUT_MS = 600_000;
let drainDeadline = Infinity;

/** Waits (polling every `ms`) until `done()` resolves true, at most until the drain's deadline. */
async function until(what, done, ms) {
  while (!(await done())) {
    if (Date.now() > drainDeadline) throw new Error(`the drain did not finish within 10 minutes: ${what}`);
    await sleep(ms);
  }
}

/** Polls (every 5 ms, on the probe) until `sql` counts 0 rows: the completions are durable. */
async function untilNone(probe, sql) {
  await until(`rows left: ${sql}`, async () => Number(await probe.value(sql)) === 0, 5);
}

/** Waits until every job has executed. */
async function untilExecuted(jobs) {
  await until(`${executions} of ${jobs} jobs executed`, () => executions >= jobs, 2);
}

// The job: one trivial async call, counted (durably's job runs one step whose function does the
// same, and persists the step's result).
let executions = 0;
let firstExecution = 0;
async function task() {
  await Promise.resolve();
  if (executions === 0) firstExecution = performance.now();
  executions += 1;
}

/** Logs the errors of `pool` and of its connections (graphile-worker asks for both). */
function handleErrors(pool) {
  pool.on("error", (error) => console.error(error));
  pool.on("connect", (client) => client.on("error", (error) => console.error(error)));
}

async function graphile(args, schema, producerApp, workerApp, probe) {
  // Every job's success is otherwise logged at info level (read when the module loads).
  process.env.NO_LOG_SUCCESS = "1";
  const { Logger, makeWorkerUtils, run } = await import("graphile-worker");
  const version = installedVersion("graphile-worker");
  const logger = new Logger(() => (level, message) => {
    if (level === "error") console.error(message);
  });

  const producerPool = new pg.Pool({ connectionString: args.db, application_name: producerApp, max: 4 });
  handleErrors(producerPool);
  const utils = await makeWorkerUtils({ pgPool: producerPool, schema, logger });
  await utils.migrate();
  const enqueueStarted = performance.now();
  for (let start = 0; start < args.jobs; start += 1000) {
    const specs = [];
    for (let n = start; n < Math.min(start + 1000, args.jobs); n += 1) {
      specs.push({ identifier: "bench", payload: { n } });
    }
    await utils.addJobs(specs);
  }
  const enqueueS = (performance.now() - enqueueStarted) / 1000;
  await utils.release();
  await producerPool.end();
  const before = probe ? await probe.readAfterClose(producerApp) : undefined;

  resetPeakRss();
  // The preset of graphile-worker's Performance docs, at this concurrency: a local queue of 500
  // jobs fetched in one statement, completions and failures batched.
  const batched =
    args.mode === "batched" ? { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } : {};
  // The worker's settings go in a preset (as in the docs; `run()` ignores them as plain options).
  const workerPool = new pg.Pool({
    connectionString: args.db,
    application_name: workerApp,
    max: Math.max(10, args.concurrency + 2),
  });
  handleErrors(workerPool);
  const started = performance.now();
  drainDeadline = Date.now() + DRAIN_TIMEOUT_MS;
  const runner = await run({
    pgPool: workerPool,
    schema,
    concurrency: args.concurrency,
    noHandleSignals: true,
    logger,
    taskList: { bench: task },
    preset: { worker: batched },
  });
  await untilExecuted(args.jobs);
  await untilNone(probe, `SELECT count(*) FROM "${schema}"._private_jobs`);
  const processS = (performance.now() - started) / 1000;
  await runner.stop();
  await workerPool.end();
  return { version, enqueueS, processS, before, settings: batched, started };
}

async function pgboss(args, schema, producerApp, workerApp, probe) {
  const { PgBoss } = await import("pg-boss");
  const version = installedVersion("pg-boss");
  const queue = "bench";
  const producer = new PgBoss({
    connectionString: args.db,
    schema,
    application_name: producerApp,
    max: 4,
    supervise: false,
    schedule: false,
  });
  producer.on("error", (error) => console.error(error));
  await producer.start();
  await producer.createQueue(queue);
  const enqueueStarted = performance.now();
  for (let start = 0; start < args.jobs; start += 1000) {
    const jobs = [];
    for (let n = start; n < Math.min(start + 1000, args.jobs); n += 1) jobs.push({ data: { n } });
    await producer.insert(queue, jobs);
  }
  const enqueueS = (performance.now() - enqueueStarted) / 1000;
  await producer.stop({ graceful: true, close: true });
  const before = probe ? await probe.readAfterClose(producerApp) : undefined;

  resetPeakRss();
  const boss = new PgBoss({
    connectionString: args.db,
    schema,
    application_name: workerApp,
    max: Math.max(10, args.concurrency + 2),
  });
  boss.on("error", (error) => console.error(error));
  let settings;
  const started = performance.now();
  drainDeadline = Date.now() + DRAIN_TIMEOUT_MS;
  await boss.start();
  if (args.mode === "batched") {
    // pg-boss's own worker loop: `localConcurrency` workers, each fetching up to 100 jobs in one
    // statement, running them one after the other, completing them in one statement, and fetching
    // again at once while fetches come back full.
    settings = { batchSize: 100, localConcurrency: args.concurrency, burstWhenBatchFull: true };
    await boss.work(queue, settings, async (jobs) => {
      for (const _ of jobs) await task();
    });
    await untilExecuted(args.jobs);
  } else {
    // One job per fetch. pg-boss's `work()` waits its polling interval (at least 0.5 s, 2 s by
    // default) after every fetch of a single job, so a backlog is drained with its fetch and
    // complete calls, `concurrency` loops of: fetch one job, run it, complete it.
    settings = { loop: "fetch(1) + complete(id)", loops: args.concurrency };
    const loops = Array.from({ length: args.concurrency }, async () => {
      for (;;) {
        if (Date.now() > drainDeadline) throw new Error("the drain did not finish within 10 minutes");
        const [job] = await boss.fetch(queue);
        if (!job) return;
        await task();
        await boss.complete(queue, job.id);
      }
    });
    await Promise.all(loops);
  }
  await untilNone(probe, `SELECT count(*) FROM "${schema}".job WHERE name = '${queue}' AND state < 'completed'`);
  const processS = (performance.now() - started) / 1000;
  await boss.stop({ graceful: true, close: true, timeout: 30000 });
  return { version, enqueueS, processS, before, settings, started };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const tag = `${args.system}_${args.mode}_${process.pid}`;
  const schema = `peers_${tag}`;
  const producerApp = `peers-${tag}-enqueue`;
  const workerApp = `peers-${tag}-worker`;
  const probe = await Probe.connect(args.db);
  try {
    const drain = args.system === "graphile" ? graphile : pgboss;
    const result = await drain(args, schema, producerApp, workerApp, probe);
    const after = await probe.readAfterClose(workerApp);
    const line = {
      workload: "throughput-1step",
      backend: "postgres",
      system: args.system === "graphile" ? "graphile-worker" : "pg-boss",
      version: result.version,
      mode: args.mode,
      settings: result.settings,
      node: process.version,
      concurrency: args.concurrency,
      jobs: args.jobs,
      enqueue_s: round(result.enqueueS),
      process_s: round(result.processS),
      jobs_per_s: round(args.jobs / result.processS),
      peak_rss_mb: peakRssMb(),
      duplicate_execs: Math.max(executions - args.jobs, 0),
      start_to_first_job_s: round((firstExecution - result.started) / 1000),
      ...(result.before ? probe.fields(result.before, after, args.jobs) : {}),
    };
    console.log(JSON.stringify(line));
  } finally {
    await probe.client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await probe.client.end();
  }
}

// A worker that hangs in its stop (e.g. a lost connection) must not hang compare.sh.
setTimeout(() => {
  console.error("peer.mjs: gave up after 15 minutes");
  process.exit(1);
}, 900_000).unref();

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
