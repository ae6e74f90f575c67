//! Enables the PostgreSQL behaviour suite (`cfg(durably_postgres_tests)`) when the test database
//! is configured, and the interoperability tests with the TypeScript runtime (tests/interop.rs)
//! when `node` is on PATH and the npm packages of tests/interop are installed (`npm ci` there;
//! `.ci/run` does): `cfg(durably_interop_tests)` for PostgreSQL, `cfg(durably_interop_sqlite_tests)`
//! once better-sqlite3's native module is built too; and the libSQL tests
//! (`cfg(durably_libsql_tests)`) when the `tursodb` test server of tests/libsql is installed
//! (`npm ci` there). Without them those tests are compiled but reported as ignored, with the
//! reason.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(durably_postgres_tests)");
    println!("cargo::rustc-check-cfg=cfg(durably_interop_tests)");
    println!("cargo::rustc-check-cfg=cfg(durably_interop_sqlite_tests)");
    println!("cargo::rustc-check-cfg=cfg(durably_libsql_tests)");
    println!("cargo::rerun-if-env-changed=DURABLY_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("DURABLY_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=durably_postgres_tests");
    }
    libsql_server();
    let interop = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("tests/interop");
    let installed = interop.join("node_modules/.package-lock.json");
    // `npm ci` creates node_modules there: watch the directory until it has.
    let watched = if installed.exists() {
        &installed
    } else {
        &interop
    };
    println!("cargo::rerun-if-changed={}", watched.display());
    if installed.is_file() && node_on_path() {
        println!("cargo::rustc-cfg=durably_interop_tests");
        let sqlite = interop.join("node_modules/better-sqlite3/build/Release/better_sqlite3.node");
        println!("cargo::rerun-if-changed={}", sqlite.display());
        if sqlite.is_file() {
            println!("cargo::rustc-cfg=durably_interop_sqlite_tests");
        }
    }
}

/// The libSQL test server (tests/libsql_support): `DURABLY_TEST_TURSODB`, or the binary `npm ci`
/// installs in tests/libsql.
fn libsql_server() {
    println!("cargo::rerun-if-env-changed=DURABLY_TEST_TURSODB");
    if std::env::var_os("DURABLY_TEST_TURSODB").is_some_and(|path| !path.is_empty()) {
        println!("cargo::rustc-cfg=durably_libsql_tests");
        return;
    }
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("tests/libsql");
    let binary = dir.join("node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb");
    println!(
        "cargo::rerun-if-changed={}",
        if binary.exists() { &binary } else { &dir }.display()
    );
    if binary.is_file() {
        println!("cargo::rustc-cfg=durably_libsql_tests");
    }
}

fn node_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join("node").is_file())
    })
}
