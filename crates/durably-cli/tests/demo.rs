//! `durably demo` as a real server: start it on a free port, drive it over HTTP + SSE on the
//! loopback interface, and stop it with SIGINT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BASE: &str = "/api/durably";

/// The demo process; killed if the test fails before stopping it.
struct Demo {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("demo.sqlite");
    start_demo_with(dir, &["--db", db.to_str().expect("UTF-8 path")])
}

fn start_demo_with(dir: tempfile::TempDir, args: &[&str]) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(["demo", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durably demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("the demo prints its URL")
        .expect("stdout line");
    // "durably demo: http://127.0.0.1:PORT/api/durably"
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"));
    assert!(url.ends_with(BASE), "{url}");
    let host_port = url
        .trim_start_matches("http://")
        .trim_end_matches(BASE)
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        address: host_port.parse().expect("socket address"),
        _dir: dir,
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

/// One HTTP/1.1 request with `Connection: close`; returns status and decoded body.
fn http(address: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = connect(address);
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {BASE}{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, payload) = raw.split_once("\r\n\r\n").expect("head and body");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(payload)
        } else {
            payload.to_owned()
        },
    )
}

fn dechunk(mut payload: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = payload.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        payload = &rest[size + 2..];
    }
    out
}

fn json_call(address: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = http(address, method, path, body.as_ref());
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")),
    )
}

/// An open SSE response; `data:` events are read line by line.
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    fn open(address: SocketAddr, path: &str) -> Sse {
        let mut stream = connect(address);
        write!(
            stream,
            "GET {BASE}{path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).expect("status line");
        assert!(status_line.contains(" 200 "), "{status_line}");
        let mut saw_event_stream = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            saw_event_stream |= line.eq_ignore_ascii_case("content-type: text/event-stream\r\n");
        }
        assert!(saw_event_stream);
        Sse { reader }
    }

    /// The next `data:` event, or `None` when the stream ends.
    fn next_event(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            // EOF, or the last chunk of the chunked body
            if self.reader.read_line(&mut line).expect("read SSE") == 0 || line == "0\r\n" {
                return None;
            }
            if let Some(data) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(data.trim_end()).expect("JSON event"));
            }
        }
    }
}

fn wait_for_status(address: SocketAddr, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, run) = json_call(address, "GET", &format!("/run?runId={id}"), None);
        assert_eq!(code, 200, "{run}");
        if run["status"] == status {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never became {status}: {run}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_serves_the_reference_jobs_and_stops_on_sigint() {
    let mut demo = start_demo();
    let address = demo.address;

    // a live feed of every run, open across the whole test
    let mut feed = Sse::open(address, "/runs/subscribe");

    // steps: trigger, follow the run over SSE until run:complete
    let (status, triggered) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "steps", "input": {"count": 3, "stepMs": 50}})),
    );
    assert_eq!(status, 200, "{triggered}");
    assert_eq!(triggered["disposition"], "created");
    let run_id = triggered["runId"].as_str().expect("runId").to_owned();
    let mut sse = Sse::open(address, &format!("/subscribe?runId={run_id}"));
    let mut types = Vec::new();
    while let Some(event) = sse.next_event() {
        assert_eq!(event["runId"], run_id.as_str());
        types.push(event["type"].as_str().unwrap_or_default().to_owned());
        if event["type"] == "run:complete" {
            assert_eq!(event["output"], json!({"sum": 6}));
            break;
        }
    }
    assert_eq!(
        types.last().map(String::as_str),
        Some("run:complete"),
        "{types:?}"
    );
    assert!(types.iter().any(|t| t == "run:progress"), "{types:?}");
    assert!(
        sse.next_event().is_none(),
        "/subscribe ends after the terminal event"
    );
    let first = feed.next_event().expect("feed event");
    assert_eq!(
        first,
        json!({"type": "run:trigger", "runId": run_id, "jobName": "steps", "labels": {}})
    );

    // invalid input: 400 and nothing stored
    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "sleep", "input": {"ms": -1}})),
    );
    assert_eq!(status, 400);
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input: "),
        "{error}"
    );
    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "echo", "input": {}})),
    );
    assert_eq!(status, 400, "echo requires value: {error}");
    let (_, runs) = json_call(address, "GET", "/runs", None);
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");

    // sleep: trigger, wait until leased, cancel
    let (_, sleeping) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "sleep", "input": {"ms": 60000}})),
    );
    let sleep_id = sleeping["runId"].as_str().expect("runId").to_owned();
    wait_for_status(address, &sleep_id, "leased");
    let (status, body) = json_call(address, "POST", &format!("/cancel?runId={sleep_id}"), None);
    assert_eq!((status, body), (200, json!({"success": true})));
    wait_for_status(address, &sleep_id, "cancelled");

    // SIGINT: graceful shutdown ends the open feed and exits 0
    let pid = demo.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    while feed.next_event().is_some() {}
    assert!(TcpStream::connect(address).is_err(), "no longer accepting");
}

/// Defects of the reference jobs' input schemas found by fuzzing (issue 19, item 5:
/// fuzz/run.sh), each reproduced: the document said what the server refused, or refused what
/// it took.
/// The reference jobs of durable waits and parallel steps (`demo-jobs.md`), at the wire level:
/// `approval` waits without a slot until `POST /signal` (or its deadline), refuses a payload of
/// another shape; `fanout` joins its branches or fails with the failed branch's error.
#[test]
fn demo_serves_approval_and_fanout() {
    let demo = start_demo();
    let address = demo.address;
    let trigger = |body: Value| {
        let (status, triggered) = json_call(address, "POST", "/trigger", Some(body));
        assert_eq!(status, 200, "{triggered}");
        triggered["runId"].as_str().expect("runId").to_owned()
    };
    let signal = |run_id: &str, payload: Value, signal_id: &str| {
        let (status, waits) = json_call(address, "GET", &format!("/waits?runId={run_id}"), None);
        assert_eq!(status, 200, "{waits}");
        assert_eq!(waits[0]["name"], "approval", "{waits}");
        let wait_id = waits[0]["id"].as_str().expect("wait id").to_owned();
        json_call(
            address,
            "POST",
            &format!("/signal?runId={run_id}&waitId={wait_id}"),
            Some(json!({"signalId": signal_id, "payload": payload})),
        )
    };

    let approved = trigger(json!({"jobName": "approval", "input": {}}));
    let waiting = wait_for_status(address, &approved, "waiting");
    assert_eq!(waiting["isWaiting"], true, "{waiting}");
    let (status, answer) = signal(&approved, json!({"approved": true, "by": "ada"}), "s1");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["disposition"], "accepted");
    let done = wait_for_status(address, &approved, "completed");
    assert_eq!(done["output"], json!({"approved": true, "by": "ada"}));

    let refused = trigger(json!({"jobName": "approval", "input": {}}));
    wait_for_status(address, &refused, "waiting");
    let (status, _) = signal(&refused, json!({"approved": "yes"}), "s1");
    assert_eq!(status, 200);
    let failed = wait_for_status(address, &refused, "failed");
    assert_eq!(failed["error"], "Invalid approval payload");

    let timed_out = trigger(json!({"jobName": "approval", "input": {"timeoutMs": 200}}));
    let done = wait_for_status(address, &timed_out, "completed");
    assert_eq!(done["output"], json!({"timedOut": true}));

    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "approval", "input": {"timeoutMs": 0}})),
    );
    assert_eq!(status, 400, "{error}");

    let fanout = trigger(json!({"jobName": "fanout", "input": {"branches": 5, "stepMs": 20}}));
    let done = wait_for_status(address, &fanout, "completed");
    assert_eq!(done["output"], json!({"sum": 15}));
    let failing = trigger(json!({"jobName": "fanout", "input": {"branches": 4, "failAt": 3}}));
    let failed = wait_for_status(address, &failing, "failed");
    assert_eq!(failed["error"], "branch 3 failed");
    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "fanout", "input": {"branches": 51}})),
    );
    assert_eq!(status, 400, "{error}");
}

/// The reference job of step retries (`demo-jobs.md`): `flaky` succeeds at the attempt after
/// its failures, or fails with the last attempt's error when its attempts run out.
#[test]
fn demo_serves_flaky() {
    let demo = start_demo();
    let address = demo.address;
    let trigger = |input: Value| {
        let (status, triggered) = json_call(
            address,
            "POST",
            "/trigger",
            Some(json!({"jobName": "flaky", "input": input})),
        );
        (status, triggered)
    };
    let (status, triggered) = trigger(json!({"failTimes": 2, "maxAttempts": 3, "delayMs": 10}));
    assert_eq!(status, 200, "{triggered}");
    let done = wait_for_status(
        address,
        triggered["runId"].as_str().expect("runId"),
        "completed",
    );
    assert_eq!(done["output"], json!({"attempts": 3}));
    let (status, triggered) = trigger(json!({"failTimes": 3, "maxAttempts": 3}));
    assert_eq!(status, 200, "{triggered}");
    let failed = wait_for_status(
        address,
        triggered["runId"].as_str().expect("runId"),
        "failed",
    );
    assert_eq!(failed["error"], "attempt 3 failed");
    let (status, error) = trigger(json!({"failTimes": 0, "maxAttempts": 0}));
    assert_eq!(status, 400, "{error}");
}

/// `nap` (`demo-jobs.md`): one durable sleep; while asleep the run is `waiting` with the wait
/// `sleep:nap` listed; then `{ "slept": ms }`. `ms` beyond a day is refused.
#[test]
fn demo_serves_nap() {
    let demo = start_demo();
    let address = demo.address;
    let (status, napping) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "nap", "input": {"ms": 1500}})),
    );
    assert_eq!(status, 200, "{napping}");
    let id = napping["runId"].as_str().expect("runId").to_owned();
    let asleep = wait_for_status(address, &id, "waiting");
    assert_eq!(asleep["isWaiting"], true, "{asleep}");
    let (status, waits) = json_call(address, "GET", &format!("/waits?runId={id}"), None);
    assert_eq!(status, 200, "{waits}");
    assert_eq!(waits[0]["name"], "sleep:nap", "{waits}");
    assert_eq!(waits[0]["metadata"], json!({"durably": {"kind": "sleep"}}));
    assert!(waits[0]["deadlineAt"].is_string(), "{waits}");
    let done = wait_for_status(address, &id, "completed");
    assert_eq!(done["output"], json!({"slept": 1500}));

    let (status, zero) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "nap", "input": {"ms": 0}})),
    );
    assert_eq!(status, 200, "{zero}");
    let zero = zero["runId"].as_str().expect("runId").to_owned();
    let done = wait_for_status(address, &zero, "completed");
    assert_eq!(done["output"], json!({"slept": 0}));

    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "nap", "input": {"ms": 86400001}})),
    );
    assert_eq!(status, 400, "{error}");
}

/// `parent` (`demo-jobs.md`): `children` child runs of `echo`, each linked to the parent
/// (`parentRunId`), then `{ "sum": 1 + … + children }`. 0 or more than 1,000 is refused.
#[test]
fn demo_serves_parent() {
    let demo = start_demo();
    let address = demo.address;
    let (status, body) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "parent", "input": {"children": 10}})),
    );
    assert_eq!(status, 200, "{body}");
    let id = body["runId"].as_str().expect("runId").to_owned();
    let done = wait_for_status(address, &id, "completed");
    assert_eq!(done["output"], json!({"sum": 55}));
    let (status, runs) = json_call(address, "GET", "/runs?jobName=echo&limit=100", None);
    assert_eq!(status, 200, "{runs}");
    let children: Vec<&Value> = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter(|run| run["parentRunId"] == json!(id))
        .collect();
    assert_eq!(children.len(), 10, "{runs}");
    for children in [0, 1001] {
        let (status, error) = json_call(
            address,
            "POST",
            "/trigger",
            Some(json!({"jobName": "parent", "input": {"children": children}})),
        );
        assert_eq!(status, 400, "{error}");
    }
}

#[test]
fn fuzz_reference_job_schemas_say_what_the_jobs_take() {
    let demo = start_demo();
    let address = demo.address;
    let (status, doc) = json_call(address, "GET", "/openapi.json", None);
    assert_eq!(status, 200);
    let alternatives = doc["components"]["schemas"]["TriggerRequest"]["oneOf"]
        .as_array()
        .expect("one alternative per job")
        .clone();
    // A missing input is null, which no reference job takes: `input` is required (ST202:
    // `{"jobName":"steps"}` was valid by the document and refused).
    for alternative in &alternatives {
        assert_eq!(
            alternative["required"],
            json!(["jobName", "input"]),
            "{alternative}"
        );
    }
    let (status, error) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "steps"})),
    );
    assert_eq!(status, 400, "{error}");
    let steps = alternatives
        .iter()
        .find(|a| a["properties"]["jobName"]["const"] == "steps")
        .expect("steps")["properties"]["input"]["properties"]
        .clone();
    // `stepMs` and `failAt` take null (ST201: `"stepMs": null` was accepted against the
    // document); `failAt` is an i64 (ST202: 1e20 was valid by the document and refused).
    assert_eq!(steps["stepMs"]["type"], json!(["integer", "null"]));
    assert_eq!(steps["failAt"]["type"], json!(["integer", "null"]));
    assert_eq!(steps["failAt"]["maximum"], json!(i64::MAX));
    assert_eq!(steps["failAt"]["minimum"], json!(i64::MIN));
    let (status, body) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "steps", "input": {"count": 1, "stepMs": null, "failAt": null}})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        address,
        "POST",
        "/trigger",
        Some(&json!({"jobName": "steps", "input": {"count": 1, "failAt": 1e20}})),
    );
    assert_eq!(status, 400, "{body}");
    // Just below i64::MIN: the document's minimum, and the server refuses it too (ST201, once
    // integral floats were read as integers: it parses as the float -2^63).
    let (status, body) = http(
        address,
        "POST",
        "/trigger",
        Some(
            &serde_json::from_str::<Value>(
                r#"{"jobName": "steps", "input": {"count": 1, "failAt": -9223372036854775809}}"#,
            )
            .expect("JSON"),
        ),
    );
    assert_eq!(status, 400, "{body}");
    // An integral float is the integer it equals (ST202: `"count": 3.0` was refused).
    let (status, body) = json_call(
        address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "steps", "input": {"count": 3.0}})),
    );
    assert_eq!(status, 200, "{body}");
    let run = wait_for_status(address, body["runId"].as_str().unwrap(), "completed");
    assert_eq!(run["output"], json!({"sum": 6}));
}

/// `durably demo --db postgres://… --schema NAME` (what fuzz/run.sh fuzzes on PostgreSQL):
/// the schema is created, a run completes, the schema is dropped afterwards.
#[test]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL demo test"
)]
fn demo_runs_on_postgresql() {
    let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("DURABLY_TEST_POSTGRES_URL");
    let schema = format!("durably_demo_test_{}", std::process::id());
    let drop_schema = |url: &str, schema: &str| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
                .expect("drop schema");
        });
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = start_demo_with(dir, &["--db", &url, "--schema", &schema]);
    let (status, triggered) = json_call(
        demo.address,
        "POST",
        "/trigger",
        Some(json!({"jobName": "steps", "input": {"count": 2}})),
    );
    assert_eq!(status, 200, "{triggered}");
    let run = wait_for_status(
        demo.address,
        triggered["runId"].as_str().unwrap(),
        "completed",
    );
    assert_eq!(run["output"], json!({"sum": 3}));
    let _ = demo.child.kill();
    let _ = demo.child.wait();
    drop_schema(&url, &schema);
}

/// The demo registers the `heartbeat` schedule, paused (a fresh demo has only the runs its user
/// triggers); it can be triggered now and resumed over HTTP.
#[test]
fn demo_registers_the_heartbeat_schedule_paused() {
    let demo = start_demo();
    let (status, schedules) = json_call(demo.address, "GET", "/schedules", None);
    assert_eq!(status, 200, "{schedules}");
    let heartbeat = &schedules[0];
    assert_eq!(schedules.as_array().map(Vec::len), Some(1), "{schedules}");
    assert_eq!(heartbeat["name"], "heartbeat");
    assert_eq!(heartbeat["jobName"], "echo");
    assert_eq!(heartbeat["cron"], "0 * * * * *");
    assert_eq!(heartbeat["input"], json!({"value": "heartbeat"}));
    assert_eq!(heartbeat["catchUp"], "skip");
    assert_eq!(heartbeat["paused"], true);
    let (_, runs) = json_call(demo.address, "GET", "/runs", None);
    assert_eq!(runs, json!([]));

    let (status, triggered) = json_call(
        demo.address,
        "POST",
        "/schedules/trigger?name=heartbeat",
        None,
    );
    assert_eq!(status, 200, "{triggered}");
    let run_id = triggered["runId"].as_str().expect("runId").to_owned();
    let (status, run) = json_call(demo.address, "GET", &format!("/run?runId={run_id}"), None);
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["labels"], json!({"durably.schedule": "heartbeat"}));
    let (status, resumed) = json_call(
        demo.address,
        "POST",
        "/schedules/resume?name=heartbeat",
        None,
    );
    assert_eq!(
        (status, &resumed["paused"]),
        (200, &json!(false)),
        "{resumed}"
    );
}

/// `GET path` (absolute, outside the API); returns status, head and body (not chunked: the
/// routes tested here answer with a length).
fn get_page(address: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut stream = connect(address);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head and body");
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf-8 head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), raw[split + 4..].to_vec())
}

#[test]
fn demo_browser_page_says_how_to_build_the_package_then_serves_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("demo.sqlite");
    let package = dir.path().join("durably-browser");
    let demo = start_demo_with(
        tempfile::tempdir().expect("temp dir"),
        &[
            "--db",
            db.to_str().expect("UTF-8 path"),
            "--browser-package",
            package.to_str().expect("UTF-8 path"),
        ],
    );

    // Without the package: 503 and the exact commands that build it into that directory.
    let (status, head, body) = get_page(demo.address, "/browser");
    let body = String::from_utf8(body).expect("utf-8 page");
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        body.contains(&format!(
            "bash .ci/wasm-toolchain.sh &amp;&amp; . ~/.cache/durably-wasm/env.sh\ncrates/durably/browser/build.sh {}",
            package.display()
        )),
        "{body}"
    );
    assert!(body.contains("--browser-package DIR"), "{body}");
    let (status, _, body) = get_page(demo.address, "/browser/pkg/durably_bg.wasm");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("crates/durably/browser/build.sh"), "{body}");

    // Once built (the directory is looked at on each request, no restart): the page, its
    // scripts, and the package's files with their types; nothing outside the directory.
    std::fs::create_dir(&package).expect("package dir");
    for file in ["durably.js", "worker.js", "client.js", "job.js"] {
        std::fs::write(package.join(file), format!("// {file}\n")).expect("write");
    }
    std::fs::write(package.join("durably_bg.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let (status, _, body) = get_page(demo.address, "/browser");
    let body = String::from_utf8(body).expect("utf-8 page");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/browser/page.js"), "{body}");
    for script in ["/browser/page.js", "/browser/worker.js", "/browser/jobs.js"] {
        let (status, head, _) = get_page(demo.address, script);
        assert_eq!(status, 200, "{script}");
        assert!(head.contains("content-type: text/javascript"), "{head}");
    }
    let (status, head, body) = get_page(demo.address, "/browser/pkg/durably_bg.wasm");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert_eq!(body, b"\0asm\x01\0\0\0");
    let (status, head, body) = get_page(demo.address, "/browser/pkg/worker.js");
    assert_eq!(
        (status, body.as_slice()),
        (200, b"// worker.js\n".as_slice())
    );
    assert!(head.contains("content-type: text/javascript"), "{head}");
    for outside in [
        "/browser/pkg/..%2Fdemo.sqlite",
        "/browser/pkg/.hidden.js",
        "/browser/pkg/durably.d.ts",
    ] {
        let (status, _, _) = get_page(demo.address, outside);
        assert_eq!(status, 404, "{outside}");
    }
}
