//! Compatibility with databases written by the TypeScript library (`@coji/durably` v0.15).
//!
//! `fixtures/upstream-v0.15/upstream.sqlite` was produced by the published npm package (see the
//! fixture's README and `generate.mjs`); `expected.json` holds what the TypeScript library itself
//! returns for it and `sqlite_master.json` its exact DDL. SQLite only.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::within;
use durably::{
    Disposition, Durably, Error, Job, Log, Run, RunFilter, RunStatus, SqliteStore, Step,
    StepContext, Store, TriggerOptions,
};
use rusqlite::types::Value as SqlValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream-v0.15");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Expected {
    cases: BTreeMap<String, String>,
    runs: Vec<Run>,
    steps: BTreeMap<String, Vec<Step>>,
    logs: BTreeMap<String, Vec<Log>>,
    schema_versions: Vec<SchemaVersion>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
struct SchemaVersion {
    version: i64,
    applied_at: String,
}

#[derive(Deserialize, Debug, PartialEq, Clone)]
struct MasterRow {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    tbl_name: String,
    sql: Option<String>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(Path::new(FIXTURE_DIR).join("expected.json"))
        .expect("read expected.json");
    serde_json::from_str(&text).expect("expected.json deserializes into durably's types")
}

fn expected_master() -> Vec<MasterRow> {
    let text = std::fs::read_to_string(Path::new(FIXTURE_DIR).join("sqlite_master.json"))
        .expect("read sqlite_master.json");
    serde_json::from_str(&text).expect("parse sqlite_master.json")
}

/// A private copy of the fixture database (tests must never modify the original).
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("upstream.sqlite");
    std::fs::copy(Path::new(FIXTURE_DIR).join("upstream.sqlite"), &path).expect("copy fixture");
    (dir, path)
}

fn master(conn: &rusqlite::Connection) -> Vec<MasterRow> {
    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .expect("prepare");
    stmt.query_map([], |row| {
        Ok(MasterRow {
            kind: row.get(0)?,
            name: row.get(1)?,
            tbl_name: row.get(2)?,
            sql: row.get(3)?,
        })
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    master: Vec<MasterRow>,
    rows: BTreeMap<String, Vec<Vec<SqlValue>>>,
}

/// `sqlite_master` plus every row of every durably_* table, read with a raw connection.
fn snapshot(path: &Path) -> Snapshot {
    let conn = rusqlite::Connection::open(path).expect("raw connection");
    let master = master(&conn);
    let mut rows = BTreeMap::new();
    for table in master
        .iter()
        .filter(|m| m.kind == "table" && m.name.starts_with("durably_"))
    {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{}\" ORDER BY rowid", table.name))
            .expect("prepare");
        let columns = stmt.column_count();
        let table_rows: Vec<Vec<SqlValue>> = stmt
            .query_map([], |row| {
                (0..columns).map(|i| row.get::<_, SqlValue>(i)).collect()
            })
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        rows.insert(table.name.clone(), table_rows);
    }
    Snapshot { master, rows }
}

/// The fixture's `queued-job` input: `{ text, note: string | null, priority = 5 }`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct QueuedInput {
    text: String,
    note: Option<String>,
    #[serde(default = "default_priority")]
    priority: i64,
}

fn default_priority() -> i64 {
    5
}

/// A Rust job with the fixture's job name. Its step `partial` was already persisted by the
/// TypeScript runtime for the fixture's leased run, so there it replays `{"partial": true}`.
fn queued_job() -> Job<QueuedInput, Value> {
    Job::new(
        "queued-job",
        |step: StepContext, input: QueuedInput| async move {
            let partial = step
                .run("partial", |_| async { Ok(json!({"partial": false})) })
                .await?;
            Ok(json!({
                "text": input.text,
                "note": input.note,
                "priority": input.priority,
                "partial": partial,
            }))
        },
    )
}

async fn open_fixture(path: &Path) -> Durably {
    let durably = Durably::builder()
        .sqlite(path)
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    durably
}

/// The columns upstream's versions 3 and 4 add to `durably_runs`, as SQLite appends them to the
/// table's DDL, then the nullable columns of durably's own additions (version 1: priorities;
/// version 3: child runs' parent and parent wait; version 4: the trigger's trace context).
const RUNS_V4_COLUMNS: &str = ", \"waiting_on_wait_id\" text, \"resume_claimed_at\" text, \
     \"rs_priority\" integer, \"rs_parent_run_id\" text, \"rs_parent_wait_id\" text, \
     \"rs_trace_context\" text";

/// What `sqlite_master` of an upstream v1 database becomes at version 4: the v1 objects
/// unchanged except `durably_runs`, which gains upstream's two columns (and durably's nullable
/// `rs_priority`), plus the tables and indexes of versions 2 to 4 (their DDL as upstream's
/// Kysely schema builder issues it) and durably's own objects, all named `durably_rs_*`.
fn expected_master_v4(migrated: &[MasterRow]) -> Vec<MasterRow> {
    let mut wanted = expected_master();
    for row in &mut wanted {
        if row.kind == "table" && row.name == "durably_runs" {
            let sql = row.sql.as_mut().expect("durably_runs DDL");
            let close = sql.rfind(')').expect("closing parenthesis");
            sql.insert_str(close, RUNS_V4_COLUMNS);
        }
    }
    let added = [
        "durably_step_attempts",
        "sqlite_autoindex_durably_step_attempts_1",
        "idx_durably_step_attempts_run_started",
        "durably_waits",
        "sqlite_autoindex_durably_waits_1",
        "idx_durably_waits_run_name",
        "idx_durably_waits_due",
        "durably_rs_schema_versions",
        "durably_rs_runs_pending_priority",
        "durably_rs_runs_waiting_priority",
        "durably_rs_schedules",
        "sqlite_autoindex_durably_rs_schedules_1",
        "durably_rs_schedules_due",
        "durably_rs_runs_parent",
        "durably_rs_runs_parent_wait",
    ];
    // durably's own objects (which the TypeScript runtime ignores) are exactly those listed.
    let own: Vec<&MasterRow> = migrated
        .iter()
        .filter(|m| m.name.contains("durably_rs_") || m.tbl_name.starts_with("durably_rs_"))
        .collect();
    assert_eq!(
        own.len(),
        8,
        "durably's own objects are the listed ones: {own:#?}"
    );
    for name in added {
        let row = migrated
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} was created"));
        wanted.push(row.clone());
    }
    wanted.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    wanted
}

#[tokio::test]
async fn migrate_takes_an_upstream_v1_database_to_version_4_keeping_every_row() {
    let (_dir, path) = copy_fixture();
    let before = snapshot(&path);
    assert_eq!(
        before.rows["durably_runs"].len(),
        7,
        "the fixture's seven runs"
    );

    let store = SqliteStore::open(&path).expect("open fixture");
    assert_eq!(store.schema_version().await.expect("version"), 1);
    for _ in 0..3 {
        store.migrate().await.expect("migrate");
    }
    let durably = Durably::builder()
        .store(store.clone())
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate through durably");
    assert_eq!(store.schema_version().await.expect("version"), 4);

    let after = snapshot(&path);
    assert_eq!(after.master, expected_master_v4(&after.master));
    // Every row of version 1's tables is kept; a run gains six NULL columns (upstream's two
    // and durably's `rs_priority`, `rs_parent_run_id`, `rs_parent_wait_id`,
    // `rs_trace_context`).
    for (table, rows) in &before.rows {
        let mut expected = rows.clone();
        if table == "durably_runs" {
            for row in &mut expected {
                row.extend(std::iter::repeat_n(SqlValue::Null, 6));
            }
        }
        if table == "durably_schema_versions" {
            continue;
        }
        assert_eq!(&after.rows[table], &expected, "rows of {table}");
    }
    assert!(after.rows["durably_step_attempts"].is_empty());
    assert!(after.rows["durably_waits"].is_empty());

    // Version 1's row is the TypeScript library's; ours follow it.
    let versions: Vec<SchemaVersion> = after.rows["durably_schema_versions"]
        .iter()
        .map(|row| match (&row[0], &row[1]) {
            (SqlValue::Integer(version), SqlValue::Text(applied_at)) => SchemaVersion {
                version: *version,
                applied_at: applied_at.clone(),
            },
            other => panic!("unexpected version row {other:?}"),
        })
        .collect();
    assert_eq!(versions[..1], expected().schema_versions[..]);
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // An old run has no attempt and no wait.
    for run in &expected().runs {
        let read = store.get_run(&run.id).await.expect("get_run").expect("run");
        assert_eq!(read.waiting_on_wait_id, None);
    }
}

#[tokio::test]
async fn a_fresh_database_has_the_upstream_schema_and_only_durably_s_own_additions() {
    let wanted = expected_master();
    assert_eq!(
        wanted
            .iter()
            .filter(|m| m.name.starts_with("idx_durably_"))
            .count(),
        12
    );
    // The fixture database itself matches its sqlite_master.json.
    let (_fixture_dir, fixture) = copy_fixture();
    assert_eq!(
        master(&rusqlite::Connection::open(&fixture).expect("open")),
        wanted
    );

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("fresh.sqlite");
    let store = SqliteStore::open(&path).expect("open");
    store.migrate().await.expect("migrate");
    let ours = master(&rusqlite::Connection::open(&path).expect("open"));
    // A fresh database and an upstream v1 database migrated forward are the same schema.
    let wanted = expected_master_v4(&ours);
    assert_eq!(ours.len(), wanted.len(), "same objects: {ours:#?}");
    for (ours, theirs) in ours.iter().zip(&wanted) {
        assert_eq!(ours, theirs, "byte-identical DDL for {}", theirs.name);
    }
    assert_eq!(
        ours.iter()
            .filter(|m| m.name.starts_with("idx_durably_"))
            .count(),
        15
    );
}

#[tokio::test]
async fn upstream_runs_steps_and_logs_read_back_exactly() {
    let (_dir, path) = copy_fixture();
    let expected = expected();
    let store = SqliteStore::open(&path).expect("open");
    store.migrate().await.expect("migrate");

    let runs = store.get_runs(&RunFilter::new()).await.expect("get_runs");
    assert_eq!(runs.len(), 7);
    assert_eq!(
        runs, expected.runs,
        "runs as the TypeScript library returns them"
    );
    for run in &expected.runs {
        assert_eq!(
            store.get_run(&run.id).await.expect("get_run").as_ref(),
            Some(run)
        );
    }
    assert_eq!(expected.steps.len(), 7);
    for (run_id, steps) in &expected.steps {
        assert_eq!(
            &store.get_steps(run_id).await.expect("get_steps"),
            steps,
            "steps of {run_id}"
        );
        for step in steps
            .iter()
            .filter(|s| s.status == durably::StepStatus::Completed)
        {
            assert_eq!(
                store
                    .get_completed_step(run_id, &step.name)
                    .await
                    .expect("get_completed_step")
                    .as_ref(),
                Some(step)
            );
        }
    }
    for (run_id, logs) in &expected.logs {
        assert_eq!(
            &store.get_logs(run_id).await.expect("get_logs"),
            logs,
            "logs of {run_id}"
        );
    }
    let completed = &expected.cases["completed"];
    assert_eq!(expected.logs[completed].len(), 6);
    assert_eq!(expected.steps[completed].len(), 3);

    // Our JSON form of a run is the upstream JSON form.
    let original: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE_DIR).join("expected.json")).expect("read"),
    )
    .expect("parse");
    // Version 4 adds `waitingOnWaitId` (null for these runs) right after `leaseGeneration`.
    for run in &runs {
        let text = serde_json::to_string(run).expect("serialize");
        let field = format!(
            "\"leaseGeneration\":{},\"waitingOnWaitId\":null,\"startedAt\"",
            run.lease_generation
        );
        assert!(text.contains(&field), "{text}");
    }
    let mut ours = serde_json::to_value(&runs).expect("serialize");
    for run in ours.as_array_mut().expect("array") {
        let run = run.as_object_mut().expect("object");
        assert_eq!(run.remove("waitingOnWaitId"), Some(Value::Null));
    }
    assert_eq!(
        ours, original["runs"],
        "serialized runs equal the TypeScript JSON"
    );
}

#[tokio::test]
async fn filters_work_on_upstream_runs() {
    let (_dir, path) = copy_fixture();
    let expected = expected();
    let case = |name: &str| expected.cases[name].clone();
    let durably = open_fixture(&path).await;
    let ids = |filter: RunFilter| {
        let durably = durably.clone();
        async move {
            durably
                .get_runs(&filter)
                .await
                .expect("get_runs")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids(RunFilter::new().label("app.kubernetes.io/name", "billing")).await,
        [case("completed")]
    );
    assert_eq!(
        ids(RunFilter::new()
            .label("env", "prod")
            .label("app.kubernetes.io/name", "billing"))
        .await,
        [case("completed")]
    );
    assert_eq!(
        ids(RunFilter::new().label("tenant", "t1")).await,
        [case("failed")]
    );
    assert_eq!(
        ids(RunFilter::new()
            .label("tenant", "t2")
            .label("team/owner", "ops_team-1"))
        .await,
        [case("pendingKeyed")]
    );
    assert_eq!(
        ids(RunFilter::new().label("reason", "obsolete")).await,
        [case("cancelled")]
    );
    assert!(
        ids(RunFilter::new().label("tenant", "t2").label("env", "prod"))
            .await
            .is_empty()
    );
    assert_eq!(
        ids(RunFilter::new().status(RunStatus::Pending)).await,
        [case("pendingPlain"), case("pendingKeyed")]
    );
    assert_eq!(
        ids(RunFilter::new().status(RunStatus::Leased)).await,
        [case("leased")]
    );
    assert_eq!(
        ids(RunFilter::new().job_name("queued-job").limit(2).offset(1)).await,
        [case("pendingKeyed"), case("leased")]
    );

    // Keys written by the TypeScript runtime are honoured by ours.
    let queued = durably.register(queued_job()).expect("register");
    let input = QueuedInput {
        text: "ignored".into(),
        note: None,
        priority: 1,
    };
    let again = queued
        .trigger_with(
            input.clone(),
            TriggerOptions::new().idempotency_key("idem-1"),
        )
        .await
        .expect("idempotent");
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert_eq!(again.run.id, case("pendingKeyed"));
    assert_eq!(again.run.input.text, "keyed");
    match queued
        .trigger_with(input.clone(), TriggerOptions::new().concurrency_key("ck-1"))
        .await
    {
        Err(Error::Conflict(message)) => assert!(message.contains("\"ck-1\""), "{message}"),
        other => panic!("expected Error::Conflict, got {other:?}"),
    }
    let coalesced = queued
        .trigger_with(
            input,
            TriggerOptions::new()
                .concurrency_key("ck-1")
                .coalesce(durably::Coalesce::Skip),
        )
        .await
        .expect("coalesce");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    assert_eq!(coalesced.run.id, case("pendingKeyed"));
    assert_eq!(
        durably
            .get_runs(&RunFilter::new())
            .await
            .expect("runs")
            .len(),
        7
    );
}

fn is_upstream_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 24
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            23 => *b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_worker_processes_runs_triggered_by_the_typescript_runtime() {
    let (_dir, path) = copy_fixture();
    let expected = expected();
    let case = |name: &str| expected.cases[name].clone();
    let durably = open_fixture(&path).await;
    let queued = durably.register(queued_job()).expect("register");

    // Two pending runs plus the leased run, whose 60 s lease has long expired.
    let leased = durably
        .get_run(&case("leased"))
        .await
        .expect("read")
        .expect("leased run");
    assert!(leased.lease_expires_at.expect("expiry") < durably::Timestamp::now());
    let processed = within(
        "process_until_idle",
        Duration::from_secs(20),
        durably.process_until_idle(Some("rust-worker"), None),
    )
    .await
    .expect("process_until_idle");
    assert_eq!(processed, 3);

    let plain = queued
        .get_run(&case("pendingPlain"))
        .await
        .expect("read")
        .expect("run");
    assert_eq!(plain.status, RunStatus::Completed);
    assert_eq!(
        plain.output,
        Some(json!({
            "text": "héllo ✓ 日本 😀 \"quoted\"\n\ttab",
            "note": null,
            "priority": 5,
            "partial": {"partial": false},
        }))
    );
    assert_eq!(plain.lease_generation, 1);
    assert_eq!(plain.lease_owner, None);

    let keyed = queued
        .get_run(&case("pendingKeyed"))
        .await
        .expect("read")
        .expect("run");
    assert_eq!(keyed.status, RunStatus::Completed);
    assert_eq!(keyed.output.as_ref().expect("output")["text"], "keyed");
    assert_eq!(
        keyed.labels.get("team/owner").map(String::as_str),
        Some("ops_team-1")
    );

    // The reclaimed run replayed the step the TypeScript runtime had persisted.
    let resumed = queued
        .get_run(&case("leased"))
        .await
        .expect("read")
        .expect("run");
    assert_eq!(resumed.status, RunStatus::Completed);
    assert_eq!(resumed.lease_generation, 2);
    assert_eq!(
        resumed.started_at, leased.started_at,
        "first claim time kept"
    );
    assert_eq!(
        resumed.output,
        Some(json!({
            "text": "leased",
            "note": "half done",
            "priority": 5,
            "partial": {"partial": true},
        }))
    );

    // Runs of other jobs and terminal runs were not touched.
    let untouched: Vec<&Run> = expected
        .runs
        .iter()
        .filter(|r| r.status.is_terminal())
        .collect();
    assert_eq!(untouched.len(), 4);
    for run in untouched {
        assert_eq!(
            durably.get_run(&run.id).await.expect("read").as_ref(),
            Some(run)
        );
    }

    // What we wrote uses the upstream formats (ISO timestamps, JSON text, ULID ids).
    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    let (started, completed, updated, output): (String, String, String, String) = conn
        .query_row(
            "SELECT started_at, completed_at, updated_at, output FROM durably_runs WHERE id = ?1",
            [case("pendingPlain")],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .expect("row");
    for text in [&started, &completed, &updated] {
        assert!(is_upstream_timestamp(text), "{text}");
    }
    assert_eq!(
        serde_json::from_str::<Value>(&output).expect("output is JSON text"),
        plain.output.clone().expect("output")
    );
    // A run triggered by us lands in the same format.
    let ours = queued
        .trigger(QueuedInput {
            text: "from rust".into(),
            note: Some("n".into()),
            priority: 5,
        })
        .await
        .expect("trigger")
        .run;
    let (id, input, labels, created): (String, String, String, String) = conn
        .query_row(
            "SELECT id, input, labels, created_at FROM durably_runs WHERE id = ?1",
            [&ours.id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .expect("row");
    assert_eq!(id.len(), 26);
    assert_eq!(
        serde_json::from_str::<Value>(&input).expect("input JSON"),
        json!({"text": "from rust", "note": "n", "priority": 5})
    );
    assert_eq!(labels, "{}");
    assert!(is_upstream_timestamp(&created), "{created}");
}
