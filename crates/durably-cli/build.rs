//! Enables the real-client browser test (`cfg(durably_browser_tests)`, tests/browser.rs) when
//! what it needs is on this machine: `node` on PATH, Debian's chromium (`CHROMIUM`, default
//! `/usr/bin/chromium`) and the npm packages of tests/browser (`npm ci` there). Without them the
//! test is compiled but reported as ignored, with the reason. `.ci/run` installs all three.
//!
//! Also enables the PostgreSQL smoke test of tests/commands.rs (`cfg(durably_postgres_tests)`)
//! when `DURABLY_TEST_POSTGRES_URL` is set, and the libSQL tests of tests/libsql.rs
//! (`cfg(durably_libsql_tests)`) when the library's `tursodb` test server is installed (`npm ci`
//! in crates/durably/tests/libsql) or `DURABLY_TEST_TURSODB` names one, as the library's build
//! script does.
//!
//! And the Prometheus scrape test of tests/prometheus.rs (`cfg(durably_prometheus_tests)`) when
//! Debian's `prometheus` server is installed (`PROMETHEUS`, default `/usr/bin/prometheus`).

use std::path::{Path, PathBuf};

/// Reruns this script when `path` changes. For a missing path, watches its parent directory
/// when that exists and is `within` (a missing path itself would make cargo rebuild this crate
/// on every run, and watching a far ancestor would make it scan a whole tree).
fn watch(path: &Path, within: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    } else if let Some(parent) = path.parent()
        && parent.is_dir()
        && parent.starts_with(within)
        && parent != Path::new("/")
    {
        println!("cargo::rerun-if-changed={}", parent.display());
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(durably_postgres_tests)");
    println!("cargo::rerun-if-env-changed=DURABLY_TEST_POSTGRES_URL");
    if std::env::var_os("DURABLY_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=durably_postgres_tests");
    }
    libsql_server();
    prometheus_server();
    println!("cargo::rustc-check-cfg=cfg(durably_browser_tests)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CHROMIUM");
    println!("cargo::rerun-if-env-changed=PATH");
    let chromium =
        PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    let usr_bin = Path::new("/usr/bin");
    watch(&chromium, usr_bin);
    let node = find_on_path("node");
    watch(
        node.as_deref().unwrap_or(Path::new("/usr/bin/node")),
        usr_bin,
    );
    let browser = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("tests/browser");
    let installed = browser.join("node_modules/.package-lock.json");
    if installed.exists() {
        watch(&installed, &browser);
    } else {
        // `npm ci` creates node_modules in this (then small) directory
        println!(
            "cargo::rerun-if-changed={}",
            browser.join("package-lock.json").display()
        );
        if !browser.join("node_modules").exists() {
            println!("cargo::rerun-if-changed={}", browser.display());
        }
    }
    if chromium.is_file() && node.is_some() && installed.is_file() {
        println!("cargo::rustc-cfg=durably_browser_tests");
    }
}

/// `cfg(durably_libsql_tests)` when the `tursodb` test server of the library's tests/libsql is
/// installed, or `DURABLY_TEST_TURSODB` names one.
fn libsql_server() {
    println!("cargo::rustc-check-cfg=cfg(durably_libsql_tests)");
    println!("cargo::rerun-if-env-changed=DURABLY_TEST_TURSODB");
    if std::env::var_os("DURABLY_TEST_TURSODB").is_some_and(|path| !path.is_empty()) {
        println!("cargo::rustc-cfg=durably_libsql_tests");
        return;
    }
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("../durably/tests/libsql");
    let binary = dir.join("node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb");
    println!(
        "cargo::rerun-if-changed={}",
        if binary.exists() { &binary } else { &dir }.display()
    );
    if binary.is_file() {
        println!("cargo::rustc-cfg=durably_libsql_tests");
    }
}

/// `cfg(durably_prometheus_tests)` when a Prometheus server is installed: `PROMETHEUS`, or
/// Debian's `/usr/bin/prometheus`.
fn prometheus_server() {
    println!("cargo::rustc-check-cfg=cfg(durably_prometheus_tests)");
    println!("cargo::rerun-if-env-changed=PROMETHEUS");
    let binary = PathBuf::from(
        std::env::var_os("PROMETHEUS").unwrap_or_else(|| "/usr/bin/prometheus".into()),
    );
    watch(&binary, Path::new("/usr/bin"));
    if binary.is_file() {
        println!("cargo::rustc-cfg=durably_prometheus_tests");
    }
}
