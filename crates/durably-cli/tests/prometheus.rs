//! `durably demo --metrics` scraped by a real Prometheus server (Debian's `prometheus`, see
//! build.rs for when it runs; `.ci/run` installs it): the test writes a scrape config for the
//! demo's address, starts Prometheus on a free loopback port with its storage in a temporary
//! directory, completes runs on the demo and queries Prometheus's API until a durably counter
//! shows them. Also: `/metrics` exists only with `--metrics`, on `demo` and `serve`.
mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http;
use serde_json::{Value, json};

const BASE: &str = "/api/durably";

/// A child process killed (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `durably ARGS --port 0` started; its address read from the URL on its first stdout line.
fn start(args: &[&str]) -> (Process, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(args)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start durably");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("durably prints its URL")
        .expect("a stdout line");
    // "durably demo: http://127.0.0.1:PORT/api/durably" or "durably serve: http://…/ (…)"
    let url = first
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"));
    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("a socket address");
    std::thread::spawn(move || for _ in lines {});
    (Process(child), address)
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `limit`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn db_arg(dir: &Path) -> String {
    dir.join("demo.sqlite")
        .to_str()
        .expect("UTF-8 path")
        .to_owned()
}

#[test]
fn metrics_is_served_only_when_asked_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = db_arg(dir.path());
    {
        let (_demo, address) = start(&["demo", "--db", &db]);
        let (status, _, _) = http(address, "GET", "/metrics", None);
        assert_eq!(status, 404, "demo without --metrics");
    }
    {
        let (_demo, address) = start(&["demo", "--db", &db, "--metrics"]);
        let (status, content_type, body) = http(address, "GET", "/metrics", None);
        assert_eq!(status, 200, "{body}");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        // The API and the dashboard are still there.
        assert_eq!(http(address, "GET", &format!("{BASE}/runs"), None).0, 200);
        assert_eq!(http(address, "GET", "/", None).0, 200);
    }
    {
        let (_serve, address) = start(&["serve", "--db", &db]);
        assert_eq!(http(address, "GET", "/metrics", None).0, 404, "serve");
    }
    let (_serve, address) = start(&["serve", "--db", &db, "--metrics"]);
    let (status, _, body) = http(address, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    // No worker, yet the gauges come from the database: the first scrape asked for the counts,
    // a later one has them (the demos above left their reference runs in the file).
    eventually(
        "serve's /metrics has the run-count gauge",
        Duration::from_secs(60),
        || {
            let (_, _, body) = http(address, "GET", "/metrics", None);
            body.lines()
                .any(|line| {
                    line.starts_with("durably_run_count{")
                        && line.contains("durably_run_status=\"completed\"")
                })
                .then_some(())
        },
    );
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The first value of an instant query, if Prometheus has one.
fn query(prometheus: SocketAddr, expression: &str) -> Option<f64> {
    let (status, _, body) = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={expression}"),
        None,
    );
    if status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"]
        .as_array()?
        .iter()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .reduce(f64::max)
}

#[test]
#[cfg_attr(
    not(durably_prometheus_tests),
    ignore = "needs a Prometheus server ($PROMETHEUS or Debian's /usr/bin/prometheus: apt-get install prometheus); .ci/run installs it"
)]
fn prometheus_scrapes_the_demo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = db_arg(dir.path());
    let (_demo, demo) = start(&["demo", "--db", &db, "--metrics"]);

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: durably\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{demo}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let binary = std::env::var_os("PROMETHEUS").unwrap_or_else(|| "/usr/bin/prometheus".into());
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let _prometheus = Process(
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prometheus: SocketAddr = ([127, 0, 0, 1], port).into();
    let limit = Duration::from_secs(60);
    let log_text =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    eventually("Prometheus is ready", limit, || {
        std::net::TcpStream::connect(prometheus).ok()?;
        (http(prometheus, "GET", "/-/ready", None).0 == 200).then_some(())
    });

    // Three runs of the demo's `echo`, completed.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, _, body) = http(
            demo,
            "POST",
            &format!("{BASE}/trigger"),
            Some(&json!({ "jobName": "echo", "input": { "value": i } })),
        );
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        ids.push(answer["runId"].as_str().expect("runId").to_owned());
    }
    for id in &ids {
        eventually("the run completes", limit, || {
            let (_, _, body) = http(demo, "GET", &format!("{BASE}/run?runId={id}"), None);
            let run: Value = serde_json::from_str(&body).ok()?;
            (run["status"] == "completed").then_some(())
        });
    }

    // Prometheus scraped the demo (the target is up) and has the completed runs.
    let up = eventually("Prometheus scrapes the demo", limit, || {
        query(prometheus, "up%7Bjob%3D%22durably%22%7D").filter(|up| *up > 0.0)
    });
    assert_eq!(up, 1.0);
    let completed = eventually("a durably counter in Prometheus", limit, || {
        query(
            prometheus,
            "durably_runs_completed_total%7Bdurably_job_name%3D%22echo%22%7D",
        )
        .filter(|completed| *completed >= 3.0)
    });
    assert_eq!(completed, 3.0, "Prometheus log:\n{}", log_text());
    let triggered = query(
        prometheus,
        "durably_runs_triggered_total%7Bdurably_job_name%3D%22echo%22%7D",
    );
    assert_eq!(triggered, Some(3.0));
}
