// Prints a table of medians of the JSON lines of compare.sh (one file argument).
import fs from "node:fs";

const lines = fs
  .readFileSync(process.argv[2], "utf8")
  .split("\n")
  .filter(Boolean)
  .map((line) => JSON.parse(line));
const median = (values) => {
  const sorted = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const groups = new Map();
for (const line of lines) {
  const key = `${line.label}|${line.jobs}|${line.concurrency}`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(line);
}
const fmt = (v, digits) => (v === undefined ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: digits }));
console.log("| system | jobs | c | rounds | jobs/s (median) | jobs/s (range) | commits/job | WAL syncs/job | WAL bytes/job | peak RSS MB |");
console.log("|---|---|---|---|---|---|---|---|---|---|");
const order = ["durably", "graphile:default", "graphile:batched", "pgboss:default", "pgboss:batched"];
const keys = [...groups.keys()].sort((a, b) => {
  const [la, ja, ca] = a.split("|");
  const [lb, jb, cb] = b.split("|");
  return Number(ja) - Number(jb) || Number(ca) - Number(cb) || order.indexOf(la) - order.indexOf(lb);
});
for (const key of keys) {
  const runs = groups.get(key);
  const [label, jobs, c] = key.split("|");
  const rates = runs.map((r) => r.jobs_per_s);
  const col = (field, digits) => fmt(median(runs.map((r) => r[field])), digits);
  console.log(
    `| ${label} | ${jobs} | ${c} | ${runs.length} | ${fmt(median(rates), 0)} | ${fmt(Math.min(...rates), 0)}–${fmt(Math.max(...rates), 0)} | ` +
      `${col("server_commits_per_job", 3)} | ${col("wal_syncs_per_job", 3)} | ${col("wal_bytes_per_job", 0)} | ${col("peak_rss_mb", 0)} |`,
  );
}
