//! Shared harness of the behaviour suite: every test is written once against the public API
//! and run on every backend (SQLite file, SQLite in memory; PostgreSQL joins in its own issue),
//! the way River runs one driver suite against every driver.
#![allow(dead_code, unused_macros, unused_imports)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durably::{Durably, DurablyBuilder, SqliteStore, Store};

/// A storage backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SqliteFile,
    SqliteMemory,
}

/// A fresh, isolated database for one test (deleted when dropped).
pub struct TestDb {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    /// For file backends: the database path (other processes or stores may open it).
    pub path: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::SqliteFile => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("durably.sqlite");
                let store = SqliteStore::open(&path).expect("open sqlite file");
                TestDb {
                    store: Arc::new(store),
                    backend,
                    path: Some(path),
                    _dir: Some(dir),
                }
            }
            Backend::SqliteMemory => TestDb {
                store: Arc::new(SqliteStore::memory().expect("open sqlite memory")),
                backend,
                path: None,
                _dir: None,
            },
        }
    }

    /// A builder on this database with fast test timings (polling 20 ms).
    pub fn builder(&self) -> DurablyBuilder {
        Durably::builder()
            .shared_store(self.store.clone())
            .polling_interval(Duration::from_millis(20))
    }

    /// A migrated instance with test timings, configured further by `configure`.
    pub async fn durably(
        &self,
        configure: impl FnOnce(DurablyBuilder) -> DurablyBuilder,
    ) -> Durably {
        let durably = configure(self.builder()).build().expect("build durably");
        durably.migrate().await.expect("migrate");
        durably
    }
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test after `limit`
/// (a generous bound that only guards against hangs).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `future`, failing the test if it takes longer than `limit` (hang guard).
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(backend: Backend)`.
///
/// ```ignore
/// async fn trigger_creates_pending_run(backend: Backend) { ... }
/// backend_tests!(trigger_creates_pending_run, other_test);
/// ```
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::SqliteFile).await
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::SqliteMemory).await
                }
            )*
        }
    };
}
pub(crate) use backend_tests;
