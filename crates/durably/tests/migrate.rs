//! `migrate()` (upstream §5.2, migrate.shared.ts, migration-consolidated.test.ts).
mod common;

use std::sync::Arc;

use common::{Backend, TestDb, backend_tests};
use durably::{
    Disposition, Durably, Job, RunStatus, SqliteStore, StepContext, Store, store::SCHEMA_VERSION,
};
use serde_json::{Value, json};

fn echo_job() -> Job<Value, Value> {
    Job::new("echo", |_step: StepContext, input: Value| async move {
        Ok(input)
    })
}

async fn schema_version_is_zero_before_migrate(backend: Backend) {
    let db = TestDb::new(backend);
    assert_eq!(db.store.schema_version().await.expect("version"), 0);
}

async fn migrate_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.builder().build().expect("build");
    for _ in 0..3 {
        durably.migrate().await.expect("migrate");
    }
    // The store itself is idempotent too (not only the instance's once-cell).
    for _ in 0..3 {
        db.store.migrate().await.expect("store migrate");
    }
    assert_eq!(SCHEMA_VERSION, 4);
    assert_eq!(db.store.schema_version().await.expect("version"), 4);
    // A fresh instance on the migrated store migrates again without error.
    let again = db.builder().build().expect("build");
    again.migrate().await.expect("migrate again");
    assert_eq!(db.store.schema_version().await.expect("version"), 4);
    assert!(
        durably
            .get_runs(&Default::default())
            .await
            .expect("runs")
            .is_empty()
    );
}

async fn concurrent_migrations_on_one_instance_succeed(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.builder().build().expect("build");
    let echo = durably.register(echo_job()).expect("register");
    let calls = (0..8).map(|_| {
        let durably = durably.clone();
        tokio::spawn(async move { durably.migrate().await })
    });
    for result in futures::future::join_all(calls).await {
        result.expect("task").expect("migrate");
    }
    assert_eq!(db.store.schema_version().await.expect("version"), 4);
    let triggered = echo
        .trigger(json!({"after": "migrate"}))
        .await
        .expect("trigger");
    assert_eq!(triggered.disposition, Disposition::Created);
    assert_eq!(triggered.run.status, RunStatus::Pending);
}

async fn concurrent_migrations_on_two_instances_sharing_a_store_succeed(backend: Backend) {
    let db = TestDb::new(backend);
    let first = db.builder().build().expect("build first");
    let second = db.builder().build().expect("build second");
    let calls = (0..8).map(|i| {
        let durably = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let store = db.store.clone();
        tokio::spawn(async move {
            if i % 4 == 3 {
                store.migrate().await
            } else {
                durably.migrate().await
            }
        })
    });
    for result in futures::future::join_all(calls).await {
        result.expect("task").expect("migrate");
    }
    assert_eq!(db.store.schema_version().await.expect("version"), 4);
    let echo = second.register(echo_job()).expect("register");
    let triggered = echo.trigger(json!({"n": 1})).await.expect("trigger");
    let seen = first
        .get_run(&triggered.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(seen.input, json!({"n": 1}));
}

backend_tests!(
    schema_version_is_zero_before_migrate,
    migrate_is_idempotent,
    concurrent_migrations_on_one_instance_succeed,
    concurrent_migrations_on_two_instances_sharing_a_store_succeed,
);

// ---- SQLite-only catalog checks (raw SQL through rusqlite) ----

const TABLES: [&str; 7] = [
    "durably_runs",
    "durably_steps",
    "durably_step_attempts",
    "durably_waits",
    "durably_logs",
    "durably_run_labels",
    "durably_schema_versions",
];

const INDEXES: [&str; 15] = [
    "idx_durably_step_attempts_run_started",
    "idx_durably_waits_run_name",
    "idx_durably_waits_due",
    "idx_durably_runs_job_idempotency",
    "idx_durably_runs_status_concurrency",
    "idx_durably_runs_status_created",
    "idx_durably_runs_status_lease_expires",
    "idx_durably_runs_job_created",
    "idx_durably_runs_status_completed",
    "idx_durably_runs_pending_concurrency",
    "idx_durably_run_labels_pk",
    "idx_durably_run_labels_key_value",
    "idx_durably_steps_run_index",
    "idx_durably_steps_completed_unique",
    "idx_durably_logs_run_created",
];

fn names(conn: &rusqlite::Connection, kind: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = ?1 ORDER BY name")
        .expect("prepare");
    stmt.query_map([kind], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

#[tokio::test]
async fn sqlite_migrate_creates_every_table_column_and_index() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("catalog.sqlite");
    let store = SqliteStore::open(&path).expect("open");
    for _ in 0..3 {
        store.migrate().await.expect("migrate");
    }

    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    let tables = names(&conn, "table");
    for table in TABLES {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} in {tables:?}"
        );
    }
    let indexes: Vec<String> = names(&conn, "index")
        .into_iter()
        .filter(|name| name.starts_with("idx_durably_"))
        .collect();
    let mut expected: Vec<String> = INDEXES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(indexes, expected, "exactly the fifteen upstream indexes");
    // durably's own additions: its version table, the schedules' table, the claim-order index
    // of priorities and the schedules' due index; nothing else of ours.
    assert_eq!(
        tables
            .iter()
            .filter(|t| t.starts_with("durably_rs_"))
            .collect::<Vec<_>>(),
        ["durably_rs_schedules", "durably_rs_schema_versions"],
        "{tables:?}"
    );
    let own_indexes: Vec<String> = names(&conn, "index")
        .into_iter()
        .filter(|name| name.starts_with("durably_rs_"))
        .collect();
    assert_eq!(
        own_indexes,
        [
            "durably_rs_runs_parent",
            "durably_rs_runs_parent_wait",
            "durably_rs_runs_pending_priority",
            "durably_rs_runs_waiting_priority",
            "durably_rs_schedules_due"
        ]
    );
    let own_versions: Vec<i64> = conn
        .prepare("SELECT version FROM durably_rs_schema_versions ORDER BY version")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(own_versions, [1, 2, 3, 4]);
    // A database whose version table of ours was lost climbs our ladder again without error
    // (SQLite has no `ADD COLUMN IF NOT EXISTS`: a column already there is the step applied).
    conn.execute_batch("DROP TABLE durably_rs_schema_versions")
        .expect("drop our version table");
    store.migrate().await.expect("migrate again");
    let again: i64 = conn
        .query_row(
            "SELECT MAX(version) FROM durably_rs_schema_versions",
            [],
            |row| row.get(0),
        )
        .expect("our version");
    assert_eq!(again, 4);

    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('durably_runs')")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    for column in [
        "lease_owner",
        "lease_expires_at",
        "lease_generation",
        "completed_step_count",
        "waiting_on_wait_id",
        "resume_claimed_at",
        "rs_priority",
        "rs_parent_run_id",
        "rs_parent_wait_id",
        "rs_trace_context",
    ] {
        assert!(columns.iter().any(|c| c == column), "column {column}");
    }

    let versions: Vec<(i64, String)> = conn
        .prepare("SELECT version, applied_at FROM durably_schema_versions")
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(
        versions.iter().map(|v| v.0).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "one row per upstream version: {versions:?}"
    );
    for (_, applied_at) in &versions {
        assert!(
            durably::Timestamp::parse(applied_at).is_some(),
            "applied_at is an ISO timestamp: {applied_at}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_stores_on_one_file_migrate_concurrently() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("shared.sqlite");
    let stores: Vec<Arc<dyn Store>> = (0..2)
        .map(|_| Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>)
        .collect();
    let calls = (0..8).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move { store.migrate().await })
    });
    for result in futures::future::join_all(calls).await {
        result.expect("task").expect("migrate");
    }
    for store in &stores {
        assert_eq!(store.schema_version().await.expect("version"), 4);
    }
    let conn = rusqlite::Connection::open(&path).expect("raw connection");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM durably_schema_versions", [], |row| {
            row.get(0)
        })
        .expect("count");
    assert_eq!(rows, 4);

    // Both can be used afterwards: a run triggered through one is seen by the other.
    let a = Durably::builder()
        .shared_store(stores[0].clone())
        .build()
        .expect("a");
    let b = Durably::builder()
        .shared_store(stores[1].clone())
        .build()
        .expect("b");
    a.migrate().await.expect("migrate a");
    b.migrate().await.expect("migrate b");
    let echo = a.register(echo_job()).expect("register");
    let run = echo.trigger(json!("x")).await.expect("trigger").run;
    let seen = b.get_run(&run.id).await.expect("read").expect("run");
    assert_eq!(seen.status, RunStatus::Pending);
}

// ---- PostgreSQL: durably's own additions climb a ladder of their own ----

async fn pg_client() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&common::postgres_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(connection);
    client
}

/// Runs `sql` in the test database and returns the first column of each row as text.
async fn pg_texts(sql: &str) -> Vec<String> {
    pg_client()
        .await
        .query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

async fn pg_versions(schema: &str, table: &str) -> Vec<String> {
    pg_texts(&format!(
        "SELECT version::text FROM \"{schema}\".\"{table}\" ORDER BY version"
    ))
    .await
}

async fn pg_own_indexes(schema: &str) -> Vec<String> {
    pg_texts(&format!(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = '{schema}' \
         AND tablename IN ('durably_runs', 'durably_waits') AND indexname LIKE 'durably_rs_%' ORDER BY indexname"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn postgres_own_additions_are_versioned_apart_from_upstreams() {
    let db = TestDb::new(Backend::Postgres);
    let schema = db.schema.clone().expect("schema");
    for _ in 0..2 {
        db.store.migrate().await.expect("migrate");
    }
    // Upstream's table holds upstream's versions only; ours holds ours.
    assert_eq!(
        pg_versions(&schema, "durably_schema_versions").await,
        ["1", "2", "3", "4"]
    );
    assert_eq!(
        pg_versions(&schema, "durably_rs_schema_versions").await,
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(
        pg_own_indexes(&schema).await,
        [
            "durably_rs_runs_parent",
            "durably_rs_runs_parent_wait",
            "durably_rs_runs_pending_key_priority_order",
            "durably_rs_runs_pending_order",
            "durably_rs_runs_pending_priority_order",
            "durably_rs_waits_resumable"
        ]
    );

    // A database migrated before the ladder existed (the indexes, no version table of ours)
    // climbs it without error and records where it is.
    pg_client()
        .await
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".durably_rs_schema_versions"
        ))
        .await
        .expect("drop our version table");
    db.store.migrate().await.expect("migrate an older database");
    assert_eq!(
        pg_versions(&schema, "durably_rs_schema_versions").await,
        ["1", "2", "3", "4", "5", "6"]
    );
    assert_eq!(pg_own_indexes(&schema).await.len(), 6);
    assert_eq!(db.store.schema_version().await.expect("version"), 4);
}
