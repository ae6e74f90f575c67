//! The web dashboard of `durably demo` in real headless chromium: runs tests/browser/dashboard.mjs
//! (playwright-core from node, sharing tests/browser's package.json and lockfile). Triggers
//! `steps` from the form and watches its progress advance live in the runs table, opens the run
//! detail, checks that invalid input shows the server's message, cancels a `sleep` run, filters
//! by status, job and label, signals a waiting `approval` run, and shows a `parent` run's
//! children on its page and the parent on a child's page. A second test (tests/browser/overview.mjs) runs a
//! known workload and checks the overview (counts per status, runs ended per bucket, failure rate,
//! per-job percentiles, the oldest pending run, the last-day toggle, live refresh) and run timelines
//! (completed steps, a failed attempt and its retry, a waiting sleep, the step executing now).
//! A third (tests/browser/bulk.mjs) checks the runs list's time range and its bulk cancel,
//! retrigger and delete (confirmation, runs skipped, the result) in the page and through the API;
//! it also needs Debian's `sqlite3` command, to make runs old.
//! Screenshots (laptop and phone width) are saved under `target/dashboard-screenshots/`; with
//! `README_SHOT=<path>` the overview test also writes the README's screenshot there. See build.rs
//! for when it runs; `.ci/run` installs what it needs.

use std::path::PathBuf;
use std::process::Command;

fn screenshot_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    target.join("dashboard-screenshots")
}

/// Runs `script` in tests/browser with the demo binary; panics with its output unless it passed.
fn run_browser_script(script: &str, passed: &str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let shots = screenshot_dir();
    let mut command = Command::new("node");
    command
        .arg(script)
        .current_dir(dir)
        .env("DURABLY_BIN", env!("CARGO_BIN_EXE_durably"))
        .env("SCREENSHOTS", &shots);
    let output = command.output().expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(passed),
        "{script} failed ({}; screenshots in {}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        shots.display()
    );
    println!("{stdout}screenshots: {}", shots.display());
}

#[test]
#[cfg_attr(
    not(durably_browser_tests),
    ignore = "needs node, chromium (/usr/bin/chromium or $CHROMIUM) and `npm ci` in crates/durably-cli/tests/browser: .ci/run installs them"
)]
fn dashboard_overview_charts_a_known_workload_and_timelines_show_where_time_went() {
    run_browser_script("overview.mjs", "overview test passed");
}

#[test]
#[cfg_attr(
    not(durably_browser_tests),
    ignore = "needs node, chromium (/usr/bin/chromium or $CHROMIUM) and `npm ci` in crates/durably-cli/tests/browser: .ci/run installs them"
)]
fn dashboard_time_range_and_bulk_actions_change_exactly_the_selected_runs() {
    run_browser_script("bulk.mjs", "bulk test passed");
}

#[test]
#[cfg_attr(
    not(durably_browser_tests),
    ignore = "needs node, chromium (/usr/bin/chromium or $CHROMIUM) and `npm ci` in crates/durably-cli/tests/browser: .ci/run installs them"
)]
fn dashboard_triggers_follows_progress_cancels_filters_and_shows_the_run_tree() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let shots = screenshot_dir();
    let output = Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(dir)
        .env("DURABLY_BIN", env!("CARGO_BIN_EXE_durably"))
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("dashboard test passed"),
        "dashboard browser test failed ({}; screenshots in {}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        shots.display()
    );
    println!("{stdout}screenshots: {}", shots.display());
}
