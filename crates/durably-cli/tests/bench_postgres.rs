//! `durably bench --backend postgres` reports the server's own counts of the drain's
//! transactions and WAL flushes (issue 27), and drops its schemas. Needs
//! `DURABLY_TEST_POSTGRES_URL`; reported as ignored without it.

mod common;

use common::{durably_cli, expect_code};
use serde_json::Value;

#[test]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL bench test"
)]
fn bench_on_postgres_reports_the_servers_commits_and_wal_flushes_per_job() {
    let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("DURABLY_TEST_POSTGRES_URL");
    let output = durably_cli(&[
        "bench",
        "--backend",
        "postgres",
        "--db",
        &url,
        "--workload",
        "throughput-1step,steps-10",
        "--concurrency",
        "2",
        "--jobs",
        "40",
        "--step-jobs",
        "10",
    ]);
    let stdout = expect_code(&output, 0);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in &lines {
        assert_eq!(line["duplicate_step_execs"], 0, "{line}");
        // Every job commits at least its step and its completion on the server (group commit
        // may share a commit between jobs, but 40 jobs at concurrency 2 cannot share them all),
        // and a commit with synchronous_commit on flushes the WAL.
        for field in [
            "server_commits_per_job",
            "wal_syncs_per_job",
            "wal_records_per_job",
            "wal_bytes_per_job",
        ] {
            let value = line[field].as_f64().unwrap_or(-1.0);
            assert!(value > 0.0, "{field} should be positive: {line}");
        }
        assert!(
            line["server_rollbacks_per_job"].as_f64().is_some(),
            "{line}"
        );
    }
    // A step writes WAL: ten steps a job write more than one.
    let wal = |line: &Value| line["wal_bytes_per_job"].as_f64().unwrap_or(0.0);
    assert!(wal(&lines[1]) > wal(&lines[0]), "{stdout}");
}
