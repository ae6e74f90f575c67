//! `durably bench --backend libsql --db URL`: the same workloads on a remote libSQL database
//! (Turso, sqld, `tursodb --sync-server`), reached over Hrana-over-HTTP by `LibsqlStore`.
//!
//! A libSQL database has no schemas to make a fresh one per workload in, so the workloads
//! share the database and each starts on an empty one: the benchmark refuses a database that
//! already holds durably tables (it never touches tables it did not create), and drops the
//! durably tables it created after each workload (and when a workload fails).
//!
//! The token comes from `--auth-token` or `LIBSQL_AUTH_TOKEN`. `--synchronous` does not apply
//! (the server decides how it commits); the lines say `"synchronous":"server"`.

use std::sync::Arc;
use std::time::Duration;

use durably::store::libsql::hrana::{Batch, HranaClient, Statement};
use durably::{LibsqlOptions, LibsqlStore, Store};

use super::{BenchArgs, Enqueue, Shape, latency_on, print_line, throughput_on};

type BoxError = Box<dyn std::error::Error>;

/// What the lines say for `synchronous`: the server's own commit policy.
const SYNCHRONOUS: &str = "server";

/// The database of the benchmark and the client that empties it between workloads.
struct Setup {
    url: String,
    token: Option<String>,
    admin: HranaClient,
}

impl Setup {
    /// A store on the (empty) database.
    fn store(&self) -> durably::Result<Arc<dyn Store>> {
        let mut options = LibsqlOptions::default();
        options.auth_token = self.token.clone();
        Ok(Arc::new(LibsqlStore::open(&self.url, options)?))
    }

    /// The durably tables in the database (and upstream's schema-version table).
    async fn durably_tables(&self) -> Result<Vec<String>, BoxError> {
        let result = self
            .admin
            .execute(Statement::new(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'durably\\_%' \
                 ESCAPE '\\' ORDER BY name",
            ))
            .await?;
        Ok(result
            .rows
            .iter()
            .filter_map(|row| row.first().and_then(|v| v.as_str()).map(str::to_owned))
            .collect())
    }

    /// Drops the durably tables the last workload created (their indexes go with them).
    async fn empty(&self) -> Result<(), BoxError> {
        let tables = self.durably_tables().await?;
        if tables.is_empty() {
            return Ok(());
        }
        let drops = tables
            .iter()
            .map(|table| Statement::new(format!("DROP TABLE IF EXISTS \"{table}\"")));
        let result = self.admin.batch(Batch::transaction(drops)).await?;
        result
            .transaction()
            .map_err(|e| format!("cannot drop the benchmark's tables: {}", e.message))?;
        Ok(())
    }

    /// Runs one workload on the empty database, then empties it again (also when it failed).
    async fn workload<F, Fut>(&self, run: F) -> Result<serde_json::Value, BoxError>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, BoxError>>,
    {
        let line = run(self.store()?).await;
        let emptied = self.empty().await;
        let line = line?;
        emptied?;
        Ok(line)
    }
}

/// Runs the selected workloads on the remote libSQL database of `--db`.
pub(super) async fn run(args: &BenchArgs) -> Result<(), BoxError> {
    let url = args.db.clone().ok_or(
        "--backend libsql needs --db libsql://host (or https://…, http://…) of an empty database",
    )?;
    for name in ["http-during-drain", "multi-worker"] {
        if args.workload.iter().any(|w| w == name) {
            return Err(format!("workload {name} is not available with --backend libsql").into());
        }
    }
    let token = args
        .auth_token
        .clone()
        .or_else(|| std::env::var("LIBSQL_AUTH_TOKEN").ok())
        .filter(|token| !token.is_empty());
    let admin = HranaClient::new(&url, token.as_deref())?.with_timeout(Duration::from_secs(30));
    let setup = Setup { url, token, admin };
    let existing = setup.durably_tables().await.map_err(|e| {
        format!(
            "cannot reach the libSQL database {}: {e}",
            setup.admin.url()
        )
    })?;
    if !existing.is_empty() {
        return Err(format!(
            "the libSQL database {} already holds durably tables ({}): the benchmark drops \
             the tables it creates after each workload, so it needs a database without them \
             (give it a database of its own)",
            setup.admin.url(),
            existing.join(", ")
        )
        .into());
    }
    let wanted = |name: &str| args.workload.is_empty() || args.workload.iter().any(|w| w == name);
    for shape in Shape::all(args) {
        if wanted(shape.workload) {
            let line = setup
                .workload(|store| async move {
                    throughput_on(store, "libsql", None, &shape, Enqueue::Here).await
                })
                .await?;
            print_line(line, SYNCHRONOUS);
        }
    }
    if wanted("latency") {
        let line = setup
            .workload(|store| latency_on(store, "libsql", args.calls, Duration::ZERO))
            .await?;
        print_line(line, SYNCHRONOUS);
    }
    for &concurrency in &args.concurrency {
        if args.workload.iter().any(|w| w == "waits") {
            let line = setup
                .workload(|store| {
                    super::waits::waits_on(store, "libsql", concurrency, args.step_jobs)
                })
                .await?;
            print_line(line, SYNCHRONOUS);
        }
    }
    for &concurrency in &args.concurrency {
        if args.workload.iter().any(|w| w == "sleep") {
            let line = setup
                .workload(|store| {
                    super::sleep::sleep_on(store, "libsql", concurrency, args.runs, args.sleep_ms)
                })
                .await?;
            print_line(line, SYNCHRONOUS);
        }
    }
    for &concurrency in &args.concurrency {
        if args.workload.iter().any(|w| w == "fanout-children") {
            let line = setup
                .workload(|store| {
                    super::children::children_on(store, "libsql", concurrency, args.children)
                })
                .await?;
            print_line(line, SYNCHRONOUS);
        }
    }
    Ok(())
}
