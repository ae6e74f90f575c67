//! `durably demo`'s page at `/browser`: the reference jobs run entirely in the visitor's
//! browser (the engine compiled to WebAssembly, SQLite on OPFS, in a dedicated Web Worker).
//!
//! The page and its JavaScript (plain ES modules, no build step) are embedded in the binary; the
//! `durably-browser` package (the `.wasm` and its glue, built by `crates/durably/browser/build.sh`
//! with the wasm toolchain, which plain `cargo build` does not have) is served from a directory,
//! `--browser-package DIR`. The directory is looked at on every request, so a package built
//! while the demo runs is picked up by a reload; while it is absent, `/browser` answers 503 with
//! the commands that build it.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("browser_demo/index.html");
const MISSING: &str = include_str!("browser_demo/missing.html");
const PAGE_JS: &str = include_str!("browser_demo/page.js");
const WORKER_JS: &str = include_str!("browser_demo/worker.js");
const JOBS_JS: &str = include_str!("browser_demo/jobs.js");

/// Where the page is served.
pub const PATH: &str = "/browser";

/// The files the page needs from the package; without any of them it is "not built".
const REQUIRED: [&str; 5] = [
    "durably.js",
    "durably_bg.wasm",
    "worker.js",
    "client.js",
    "job.js",
];

/// The package directory used when `--browser-package` is not given: where
/// `crates/durably/browser/build.sh` writes by default, `$CARGO_TARGET_DIR/durably-browser`, or
/// `target/durably-browser` (relative to the working directory, the repository's root when the
/// demo runs through `cargo run`).
pub fn default_package_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("durably-browser")
}

/// Whether `dir` holds a built package (the files the page loads).
pub fn package_present(dir: &Path) -> bool {
    REQUIRED.iter().all(|file| dir.join(file).is_file())
}

/// The routes under [`PATH`]: the page, its scripts, and the package's files under
/// `/browser/pkg/` (read from `package`).
pub fn router(package: PathBuf) -> Router {
    let page = {
        let package = package.clone();
        move || {
            let package = package.clone();
            async move { index(&package) }
        }
    };
    Router::new()
        .route(PATH, get(page.clone()))
        .route(&format!("{PATH}/"), get(page))
        .route(
            &format!("{PATH}/page.js"),
            get(|| async { script(PAGE_JS) }),
        )
        .route(
            &format!("{PATH}/worker.js"),
            get(|| async { script(WORKER_JS) }),
        )
        .route(
            &format!("{PATH}/jobs.js"),
            get(|| async { script(JOBS_JS) }),
        )
        .route(
            &format!("{PATH}/pkg/{{file}}"),
            get(move |UrlPath(file): UrlPath<String>| {
                let package = package.clone();
                async move { package_file(&package, &file).await }
            }),
        )
}

fn script(body: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The page, or (503) the instructions that build the package when `package` lacks it.
fn index(package: &Path) -> Response {
    if package_present(package) {
        return html(StatusCode::OK, INDEX.to_owned());
    }
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        MISSING
            .replace("{{DIR}}", &escape_html(&display_dir(package)))
            .replace("{{BUILD}}", &escape_html(&build_command(package))),
    )
}

/// `package` as the user should read it: absolute when it can be made so.
fn display_dir(package: &Path) -> String {
    std::path::absolute(package)
        .unwrap_or_else(|_| package.to_owned())
        .display()
        .to_string()
}

/// The commands that build the package into `package`, run from a checkout of the durably
/// repository (they install the wasm toolchain first; docs/browser.md).
pub fn build_command(package: &Path) -> String {
    format!(
        "bash .ci/wasm-toolchain.sh && . ~/.cache/durably-wasm/env.sh\n\
         crates/durably/browser/build.sh {}",
        shell_word(&display_dir(package))
    )
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A file of the package: only plain names (no directories) of the kinds the page loads.
async fn package_file(package: &Path, file: &str) -> Response {
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let plain = !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !plain {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = package.join(file);
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(body)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response(),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            format!(
                "{file} is not in the durably-browser package at {} (build it: {})\n",
                display_dir(package),
                build_command(package).replace('\n', " && ")
            ),
        )
            .into_response(),
        Ok(Err(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {file} of {}: {error}\n", display_dir(package)),
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {file} failed: {error}\n"),
        )
            .into_response(),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
