// What the peer scripts share (peer.mjs, durably-ts.mjs): the installed versions, peak RSS, and
// the probe that reads the server's counters as durably bench reads them
// (crates/durably-cli/src/bench/server_stats.rs): after the producer's connections and after
// the worker's connections have closed (a backend publishes its pending statistics when it
// exits), minus the probe's own transactions. Database- and server-wide: other activity on the
// server is counted too.
import fs from "node:fs";
import pg from "pg";

/** The installed version of `name` (its package.json is not among its exports). */
export function installedVersion(name) {
  const file = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(fs.readFileSync(file, "utf8")).version;
}

export const round = (x) => Math.round(x * 1000) / 1000;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resets the kernel's peak-RSS counter, as durably bench does before each workload. */
export function resetPeakRss() {
  try {
    fs.writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // not Linux: the peak then covers the whole process
  }
}

export function peakRssMb() {
  try {
    const status = fs.readFileSync("/proc/self/status", "utf8");
    const kib = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? NaN);
    if (Number.isFinite(kib)) return round(kib / 1024);
  } catch {
    // fall through
  }
  return round(process.resourceUsage().maxRSS / 1024);
}

/** Reads the server's counters on a connection of its own (see the file's comment). */
export class Probe {
  constructor(client, canForce) {
    this.client = client;
    this.canForce = canForce;
    this.statements = 0;
  }

  static async connect(db) {
    const client = new pg.Client({ connectionString: db, application_name: `peers-probe-${process.pid}` });
    await client.connect();
    const probe = new Probe(client, false);
    const version = Number(await probe.value("SELECT current_setting('server_version_num')"));
    probe.canForce = version >= 150000;
    return probe;
  }

  async value(sql) {
    try {
      const result = await this.client.query(sql);
      return result.rows[0] ? Object.values(result.rows[0])[0] : undefined;
    } finally {
      this.statements += 1;
    }
  }

  async read() {
    if (this.canForce) await this.value("SELECT pg_stat_force_next_flush()");
    const statements = this.statements;
    const row = await this.value(
      "SELECT concat_ws(' ', d.xact_commit, d.xact_rollback, w.wal_records, " +
        "w.wal_bytes::bigint, w.wal_write, w.wal_sync) " +
        "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
    );
    const [commits, rollbacks, walRecords, walBytes, walWrites, walSyncs] = String(row).split(" ").map(Number);
    return { counters: { commits, rollbacks, walRecords, walBytes, walWrites, walSyncs }, statements };
  }

  /** Waits (at most 15 s) until no connection named `appName` is open, then reads. */
  async readAfterClose(appName) {
    const deadline = Date.now() + 15000;
    for (;;) {
      const open = Number(
        await this.value(
          `SELECT count(*) FROM pg_stat_activity WHERE application_name = '${appName}' AND pid <> pg_backend_pid()`,
        ),
      );
      if (open === 0) break;
      if (Date.now() > deadline) throw new Error(`connections named ${appName} still open after 15 s`);
      await sleep(20);
    }
    // A backend leaves pg_stat_activity just before it publishes its last statistics.
    await sleep(100);
    return this.read();
  }

  fields(before, after, jobs) {
    const own = this.canForce ? after.statements - before.statements : 0;
    const d = (key) => after.counters[key] - before.counters[key];
    if (Object.keys(before.counters).some((key) => !(d(key) >= 0))) return {};
    const perJob = (n) => round(n / Math.max(jobs, 1));
    return {
      server_commits_per_job: perJob(Math.max(d("commits") - own, 0)),
      server_rollbacks_per_job: perJob(d("rollbacks")),
      wal_records_per_job: perJob(d("walRecords")),
      wal_bytes_per_job: perJob(d("walBytes")),
      wal_writes_per_job: perJob(d("walWrites")),
      wal_syncs_per_job: perJob(d("walSyncs")),
    };
  }
}
