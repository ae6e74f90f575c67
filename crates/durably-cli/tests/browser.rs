//! The real React client against `durably demo`: runs tests/browser/run.mjs (a page built with
//! the published `@coji/durably-react` in fullstack mode, driven in headless Debian chromium by
//! playwright-core). See build.rs for when it runs; `.ci/run` installs what it needs.

use std::process::Command;

#[test]
#[cfg_attr(
    not(durably_browser_tests),
    ignore = "needs node, chromium (/usr/bin/chromium or $CHROMIUM) and `npm ci` in crates/durably-cli/tests/browser: .ci/run installs them"
)]
fn react_client_follows_progress_and_cancels_against_the_demo() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let output = Command::new("node")
        .arg("run.mjs")
        .current_dir(dir)
        .env("DURABLY_BIN", env!("CARGO_BIN_EXE_durably"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("browser test passed"),
        "browser test failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    println!("{stdout}");
}
