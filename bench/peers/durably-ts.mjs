// The TypeScript library itself, @coji/durably 0.15.0, on durably bench's PostgreSQL workloads,
// so that "durably (Rust) is ×N the TypeScript library" is measured in the same hour on the same
// server. Prints one JSON line like `durably bench --backend postgres` and peer.mjs.
//
//   node durably-ts.mjs --jobs N --concurrency C --db postgres://... # throughput-1step
//   node durably-ts.mjs --jobs N --processes 4 --db postgres://...   # multi-worker
//
// throughput-1step: a producer instance (a pool of its own) migrates a fresh schema and
// batch-triggers N runs of a job with one step.run (1,000 per batchTrigger, one transaction
// each), and is closed; then one worker instance with maxConcurrentRuns C drains them. The time
// runs from start() to the last `run:complete` (a completion is emitted once its UPDATE is
// committed), as durably bench's. The server's counters are read as peer.mjs reads them.
//
// multi-worker (--processes P): the producer enqueues N runs, then P worker processes (this
// script, forked) each create an instance with maxConcurrentRuns 1, migrate, say ready, and
// start on one go message; each stops once it has been idle for 20 ms and no run is pending or
// leased, and reports its step executions, its last completion (epoch ms) and its peak RSS. The
// time runs from the go message to the last completion of any process, as durably bench's
// multi-worker (crates/durably-cli/src/bench/postgres.rs). All N runs must be completed and the
// step executions must sum to N (duplicate_execs reports any excess).
//
// Every run works in a schema of its own (search_path, as tests/interop/interop.mjs drives
// 0.15.0 on PostgreSQL), dropped afterwards. Polling interval 50 ms, as durably bench's worker;
// leaseMs and the lease renewal keep their defaults; preserveSteps keeps its default (false: the
// step rows are deleted once a run completes), as durably's default.
import { fork } from "node:child_process";
import { createDurably, defineJob } from "@coji/durably";
import { PostgresDialect } from "kysely";
import pg from "pg";
import { z } from "zod";
import { Probe, installedVersion, peakRssMb, resetPeakRss, round, sleep } from "./common.mjs";

const POLLING_INTERVAL_MS = 50;
/** The drain gives up after 10 minutes, as durably bench does. */
const DRAIN_TIMEOUT_MS = 600_000;

function parseArgs(argv) {
  const args = { jobs: 2000, concurrency: 8, processes: 1, db: "", worker: "" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in args)) throw new Error(`unknown option ${argv[i]}`);
    args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.db) throw new Error("--db postgres://user@host:port/database");
  if (!(args.processes >= 1)) throw new Error("--processes P (1: throughput-1step, more: multi-worker)");
  return args;
}

/** Wall-clock milliseconds (with a fraction), comparable across processes. */
const epochMs = () => performance.timeOrigin + performance.now();

// The job: one step whose function counts its execution and returns a small value (durably
// bench's bench_job with one step: the step's result is persisted before the run completes).
let executions = 0;
let firstExecution = 0;
const benchJob = defineJob({
  name: "bench",
  input: z.object({ n: z.number() }),
  output: z.number(),
  run: async (step, input) => {
    const value = await step.run("step-0", async () => {
      if (executions === 0) firstExecution = performance.now();
      executions += 1;
      return 0;
    });
    return input.n + value;
  },
});

/** An instance on `schema` with a pool of `max` connections named `app`. */
function instance(db, schema, app, max, options = {}) {
  const pool = new pg.Pool({
    connectionString: db,
    application_name: app,
    options: `-c search_path=${schema}`,
    max,
  });
  pool.on("error", (error) => console.error(error));
  const durably = createDurably({ dialect: new PostgresDialect({ pool }), ...options }).register({ bench: benchJob });
  // Kysely's destroy() ends the pool.
  return { durably, close: () => durably.db.destroy() };
}

/** Migrates and triggers N runs with an instance of its own (closed); returns enqueue_s. */
async function enqueue(args, schema, app) {
  const producer = instance(args.db, schema, app, 4);
  try {
    await producer.durably.migrate();
    const started = performance.now();
    for (let start = 0; start < args.jobs; start += 1000) {
      const items = [];
      for (let n = start; n < Math.min(start + 1000, args.jobs); n += 1) items.push({ n });
      await producer.durably.jobs.bench.batchTrigger(items);
    }
    return (performance.now() - started) / 1000;
  } finally {
    await producer.close();
  }
}

/** Resolves once `done()` is true (checked every `ms`), rejects after the drain's timeout. */
async function until(what, done, ms) {
  const deadline = Date.now() + DRAIN_TIMEOUT_MS;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`the drain did not finish within 10 minutes: ${what}`);
    await sleep(ms);
  }
}

async function countRuns(probe, schema, status) {
  return Number(await probe.value(`SELECT count(*) FROM "${schema}".durably_runs WHERE status = '${status}'`));
}

const settings = (concurrency) => ({ maxConcurrentRuns: concurrency, pollingIntervalMs: POLLING_INTERVAL_MS });

async function throughput(args, schema, tag, probe) {
  const producerApp = `peers-${tag}-enqueue`;
  const workerApp = `peers-${tag}-worker`;
  const enqueueS = await enqueue(args, schema, producerApp);
  const before = await probe.readAfterClose(producerApp);

  resetPeakRss();
  const worker = instance(args.db, schema, workerApp, args.concurrency + 4, settings(args.concurrency));
  let completed = 0;
  worker.durably.on("run:complete", () => {
    completed += 1;
  });
  await worker.durably.migrate();
  const started = performance.now();
  worker.durably.start();
  await until(`${completed} of ${args.jobs} runs completed`, () => completed >= args.jobs, 2);
  const processS = (performance.now() - started) / 1000;
  await worker.durably.stop();
  await worker.close();
  const after = await probe.readAfterClose(workerApp);
  const done = await countRuns(probe, schema, "completed");
  if (done !== args.jobs) throw new Error(`${done} of ${args.jobs} runs completed`);
  return {
    workload: "throughput-1step",
    concurrency: args.concurrency,
    jobs: args.jobs,
    settings: settings(args.concurrency),
    enqueue_s: round(enqueueS),
    process_s: round(processS),
    jobs_per_s: round(args.jobs / processS),
    peak_rss_mb: peakRssMb(),
    duplicate_execs: Math.max(executions - args.jobs, 0),
    step_execs: executions,
    start_to_first_job_s: round((firstExecution - started) / 1000),
    ...probe.fields(before, after, args.jobs),
  };
}

/** Receives the next message of `child` (rejects if it exits first). */
function message(child) {
  return new Promise((resolve, reject) => {
    const onExit = (code) => reject(new Error(`a worker process exited (${code}) before reporting`));
    child.once("exit", onExit);
    child.once("message", (value) => {
      child.off("exit", onExit);
      resolve(value);
    });
  });
}

async function multiWorker(args, schema, tag, probe) {
  const enqueueS = await enqueue(args, schema, `peers-${tag}-enqueue`);
  const script = new URL(import.meta.url).pathname;
  const children = Array.from({ length: args.processes }, () =>
    fork(script, ["--worker", schema, "--db", args.db], { stdio: ["ignore", "inherit", "inherit", "ipc"] }),
  );
  try {
    // Every worker has connected and migrated before the go message.
    for (const ready of await Promise.all(children.map(message))) {
      if (ready !== "ready") throw new Error(`a worker process did not start: ${JSON.stringify(ready)}`);
    }
    const summaries = children.map(message);
    const started = epochMs();
    for (const child of children) child.send("go");
    const reports = await Promise.all(summaries);
    const steps = reports.reduce((sum, r) => sum + r.executions, 0);
    const lastCompleted = Math.max(started, ...reports.map((r) => r.lastCompleted));
    const processS = (lastCompleted - started) / 1000;
    const done = await countRuns(probe, schema, "completed");
    if (done !== args.jobs) throw new Error(`${done} of ${args.jobs} runs completed`);
    return {
      workload: "multi-worker",
      concurrency: 1,
      workers: args.processes,
      jobs: args.jobs,
      settings: settings(1),
      enqueue_s: round(enqueueS),
      process_s: round(processS),
      jobs_per_s: round(args.jobs / processS),
      // The largest worker process's peak (durably bench's multi-worker reports its parent's).
      peak_rss_mb: Math.max(...reports.map((r) => r.peakRssMb)),
      duplicate_execs: Math.max(steps - args.jobs, 0),
      step_execs: steps,
      per_worker_execs: reports.map((r) => r.executions),
    };
  } finally {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill();
  }
}

/** A multi-worker process (forked by multiWorker): see the file's comment. */
async function worker(args) {
  const go = new Promise((resolve) => process.once("message", resolve));
  const { durably, close } = instance(args.db, args.worker, `peers-durably-ts-${process.pid}`, 2, settings(1));
  let lastCompleted = 0;
  durably.on("run:complete", () => {
    lastCompleted = epochMs();
  });
  await durably.migrate();
  resetPeakRss();
  process.send("ready");
  await go;
  durably.start();
  // Ask the database only after a quiet interval, as durably bench's worker does.
  let seen = -1;
  const deadline = Date.now() + DRAIN_TIMEOUT_MS;
  for (;;) {
    await sleep(20);
    if (Date.now() > deadline) throw new Error("the drain did not finish within 10 minutes");
    const now = executions;
    const quiet = seen === now;
    seen = now;
    if (quiet && (await durably.getRuns({ status: ["pending", "leased"], limit: 1 })).length === 0) break;
  }
  await durably.stop();
  await close();
  process.send({ executions, lastCompleted, peakRssMb: peakRssMb() });
  process.disconnect();
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.worker) return worker(args);
  const tag = `durably_ts_${process.pid}`;
  const schema = `peers_${tag}`;
  const probe = await Probe.connect(args.db);
  try {
    await probe.client.query(`CREATE SCHEMA "${schema}"`);
    const drain = args.processes > 1 ? multiWorker : throughput;
    const result = await drain(args, schema, tag, probe);
    const { workload, ...rest } = result;
    console.log(
      JSON.stringify({
        workload,
        backend: "postgres",
        system: "durably-ts",
        version: installedVersion("@coji/durably"),
        mode: "default",
        node: process.version,
        ...rest,
      }),
    );
  } finally {
    await probe.client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await probe.client.end();
  }
}

// A worker that hangs in its stop (e.g. a lost connection) must not hang the comparison.
setTimeout(() => {
  console.error("durably-ts.mjs: gave up after 15 minutes");
  process.exit(1);
}, 900_000).unref();

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
