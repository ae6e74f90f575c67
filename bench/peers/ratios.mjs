// Prints the medians of the JSON lines of vs-typescript.sh (one file argument) and the ratio
// durably (Rust) / durably-ts (@coji/durably) of the median jobs/s, per workload, jobs and
// concurrency; a second row for durably:batched (a local queue) where it ran.
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
const fmt = (v, digits) => (v === undefined ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: digits }));

// workload|jobs|concurrency → label → lines
const groups = new Map();
for (const line of lines) {
  const key = `${line.workload}|${line.jobs}|${line.concurrency}`;
  if (!groups.has(key)) groups.set(key, new Map());
  const byLabel = groups.get(key);
  if (!byLabel.has(line.label)) byLabel.set(line.label, []);
  byLabel.get(line.label).push(line);
}

console.log(
  "| workload | jobs | c | rounds | Rust system | durably jobs/s (median; range) | durably-ts jobs/s (median; range) | ×Rust/TS | peak RSS MB Rust / TS | duplicates Rust / TS |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|");
const keys = [...groups.keys()].sort((a, b) => {
  const [wa, ja, ca] = a.split("|");
  const [wb, jb, cb] = b.split("|");
  return wb.localeCompare(wa) || Number(ja) - Number(jb) || Number(ca) - Number(cb);
});
for (const key of keys) {
  const [workload, jobs, c] = key.split("|");
  const byLabel = groups.get(key);
  const runs = (label) => byLabel.get(label) ?? [];
  const rates = (label) => runs(label).map((r) => r.jobs_per_s);
  const cell = (label) => {
    const r = rates(label);
    return r.length ? `${fmt(median(r), 0)} (${fmt(Math.min(...r), 0)}–${fmt(Math.max(...r), 0)})` : "–";
  };
  const ts = median(rates("durably-ts"));
  const col = (label, field) => fmt(median(runs(label).map((r) => r[field])), 0);
  const dups = (label) => runs(label).reduce((sum, r) => sum + (r.duplicate_execs ?? r.duplicate_step_execs ?? 0), 0);
  for (const rustLabel of ["durably", "durably:batched"]) {
    if (runs(rustLabel).length === 0) continue;
    const rust = median(rates(rustLabel));
    const ratio = rust !== undefined && ts ? fmt(rust / ts, 1) : "–";
    const rounds = Math.min(runs(rustLabel).length, runs("durably-ts").length);
    const queue = runs(rustLabel)[0].local_queue;
    console.log(
      `| ${workload} | ${jobs} | ${workload === "multi-worker" ? "4×1" : c} | ${rounds} | ${rustLabel}${queue ? ` (local queue ${queue})` : ""} | ` +
        `${cell(rustLabel)} | ${cell("durably-ts")} | ${ratio} | ` +
        `${col(rustLabel, "peak_rss_mb")} / ${col("durably-ts", "peak_rss_mb")} | ${dups(rustLabel)} / ${dups("durably-ts")} |`,
    );
  }
}
