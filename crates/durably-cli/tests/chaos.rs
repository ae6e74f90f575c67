//! The short chaos run of CI: `durably chaos` with 30 SIGKILLs and 30 SIGSTOPs of two racing
//! worker processes, on SQLite and on PostgreSQL (ignored, with the reason, when
//! `DURABLY_TEST_POSTGRES_URL` is unset), plus a self-test: workers whose job has a
//! non-durable side effect must be caught. See docs/chaos.md for the long run.
//!
//! The seed comes from the clock (so every CI run tries another schedule) unless
//! `DURABLY_CHAOS_SEED` is set; a failure prints it. The runs are serialized: two at once on a
//! 2-core machine would starve the workers' lease renewals.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `durably chaos` with `args`; returns its exit code, summary line and stderr.
fn chaos(args: &[&str]) -> (Option<i32>, Value, String) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("DURABLY_CHAOS_SEED").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| d.as_millis() as u64).to_string()
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_durably"))
        .arg("chaos")
        .args(args)
        .args(["--seed", &seed, "--timeout-s", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durably chaos");
    // The harness gives up after 50 s itself; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("poll durably chaos").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("durably chaos --seed {seed} did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("durably chaos output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let summary = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no summary line (seed {seed}): {stdout}\n{stderr}"));
    (output.status.code(), summary, stderr)
}

/// 30 kills and 30 stops; every invariant holds.
fn short_run(backend_args: &[&str]) {
    let mut args = backend_args.to_vec();
    args.extend(["--kills", "30", "--stops", "30", "--workers", "2"]);
    let (code, summary, stderr) = chaos(&args);
    assert_eq!(code, Some(0), "chaos found violations: {summary}\n{stderr}");
    assert_eq!(summary["violations"], 0, "{summary}");
    assert_eq!(summary["kills"], 30, "{summary}");
    assert_eq!(summary["stops"], 30, "{summary}");
    assert_eq!(summary["persisted_re_executions"], 0, "{summary}");
    assert!(summary["runs"].as_u64() >= Some(20), "{summary}");
    assert!(
        summary["re_executions"].as_u64() <= summary["re_execution_bound"].as_u64(),
        "{summary}"
    );
    assert!(summary["duration_s"].as_f64() < Some(50.0), "{summary}");
}

#[test]
fn thirty_kills_and_thirty_stops_on_sqlite() {
    short_run(&["--backend", "sqlite"]);
}

#[test]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the chaos run on PostgreSQL"
)]
fn thirty_kills_and_thirty_stops_on_postgres() {
    let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("DURABLY_TEST_POSTGRES_URL");
    short_run(&["--backend", "postgres", "--db", &url]);
}

/// The checker is not vacuous: a job that records step 1's side effect outside `step.run`
/// re-executes it whenever a run is taken over after step 1 was persisted, and the harness
/// reports it (exit code 1, the log kept for inspection).
#[test]
fn a_non_durable_side_effect_is_caught() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().join("run");
    let (code, summary, stderr) = chaos(&[
        "--kills",
        "8",
        "--stops",
        "0",
        "--runs",
        "10",
        "--sabotage",
        "--dir",
        dir_arg.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(1), "{summary}\n{stderr}");
    assert!(
        summary["persisted_re_executions"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(stderr.contains("after it was persisted"), "{stderr}");
    assert!(dir_arg.join("executions.log").is_file(), "the log is kept");
}
