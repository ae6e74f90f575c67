//! The libSQL test server: Turso's `tursodb --sync-server`, from the npm package pinned in
//! `tests/libsql/package-lock.json` (`npm ci` there; `.ci/run` does), serving Hrana over HTTP
//! on a free loopback port, on a fresh database file in a temporary directory.
//!
//! [`TestServer::shared`] starts one per test binary (one per test file); [`TestServer::start`]
//! a private one. Either stops when the test process ends: the server runs under a small shell
//! that kills it once its standard input closes, which the process's exit does even for the
//! shared server (a static is never dropped), and which dropping a [`TestServer`] does at once.
//!
//! build.rs sets `cfg(durably_libsql_tests)` when the binary is installed; tests that need the
//! server are ignored otherwise, with [`MISSING`] as the reason.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Why the server tests are ignored without the binary.
pub const MISSING: &str = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)";

/// How long a server may take to answer its first request.
const STARTUP: Duration = Duration::from_secs(20);

/// The `tursodb` binary of `crates/durably/tests/libsql/node_modules`, or
/// `DURABLY_TEST_TURSODB`. (The CLI crate's tests include this module too: the path is tried
/// from either crate's directory.)
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DURABLY_TEST_TURSODB").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [manifest.clone(), manifest.join("../durably")]
        .into_iter()
        .map(|crate_dir| {
            crate_dir.join("tests/libsql/node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb")
        })
        .find(|path| path.is_file())
}

/// A running `tursodb --sync-server`.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The database file.
    pub database: PathBuf,
    child: Child,
    /// Closing it makes the shell kill the server.
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static TestServer {
        static SERVER: OnceLock<TestServer> = OnceLock::new();
        SERVER.get_or_init(TestServer::start)
    }

    /// A server of its own, on a fresh database. Panics with the reason when it cannot start.
    pub fn start() -> TestServer {
        let binary = binary().unwrap_or_else(|| panic!("{MISSING}"));
        let mut last_error = String::new();
        // A free port can be taken between its probe and the server's bind: try a few.
        for _ in 0..5 {
            match TestServer::try_start(&binary) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("the tursodb test server did not start: {last_error}");
    }

    fn try_start(binary: &PathBuf) -> Result<TestServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let database = dir.path().join("test.db");
        let port = free_port()?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("server.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let mut child = Command::new("sh")
            .arg("-c")
            // $0 the binary, $1 the address, $2 the database. `read` returns when standard
            // input closes (drop, or the test process's exit), and the server is killed.
            .arg(r#""$0" --sync-server "$1" "$2" </dev/null & server=$!; read -r _; kill "$server" 2>/dev/null; wait "$server""#)
            .arg(binary)
            .arg(address.to_string())
            .arg(&database)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let stdin = child.stdin.take();
        let mut server = TestServer {
            url: format!("http://{address}"),
            database,
            child,
            stdin,
            dir,
        };
        server.wait_until_answering(address)?;
        Ok(server)
    }

    /// Polls the pipeline endpoint until it answers `SELECT 1`, the server exits, or
    /// [`STARTUP`] passes.
    fn wait_until_answering(&mut self, address: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status}): {}", self.log()));
            }
            match probe(address) {
                Ok(()) => return Ok(()),
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "no answer within {STARTUP:?} ({last}): {}",
            self.log()
        ))
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// One `SELECT 1` pipeline over a plain socket; `Ok` on an HTTP 200 with a result.
fn probe(address: SocketAddr) -> Result<(), String> {
    let body = r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT 1"}}]}"#;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST /v2/pipeline HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") && answer.contains(r#""type":"ok""#) {
        Ok(())
    } else {
        Err(format!("answer: {}", answer.lines().next().unwrap_or("")))
    }
}
