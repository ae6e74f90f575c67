//! The behaviour suite (`durably::testing::behaviour`, exported for any backend): the public
//! API's end-to-end guarantees on every backend of this crate: SQLite file, SQLite in memory,
//! PostgreSQL, and remote libSQL (the `tursodb` test server, one per test).
mod common;
#[path = "libsql_support/mod.rs"]
mod libsql_support;

use std::sync::Arc;

use common::{Backend, TestDb};
use durably::Store;

/// A fresh, migrated store on `backend`, with the database it lives in.
async fn fresh(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend);
    db.store.migrate().await.expect("migrate");
    let store = db.store.clone();
    (db, store)
}

mod sqlite_file {
    durably::store_behaviour_tests!(|| super::fresh(super::Backend::SqliteFile));
}

mod sqlite_memory {
    durably::store_behaviour_tests!(|| super::fresh(super::Backend::SqliteMemory));
}

mod postgres {
    durably::store_behaviour_tests!(
        || super::fresh(super::Backend::Postgres),
        #[cfg_attr(
            not(durably_postgres_tests),
            ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
        )]
    );
}

/// A fresh, migrated libSQL store on a test server of its own (the guard stops it).
async fn fresh_libsql() -> (libsql_support::TestServer, Arc<dyn Store>) {
    let server = tokio::task::spawn_blocking(libsql_support::TestServer::start)
        .await
        .expect("start the test server");
    let store = durably::store::LibsqlStore::connect(&server.url, None)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (server, Arc::new(store))
}

mod libsql {
    durably::store_behaviour_tests!(
        super::fresh_libsql,
        #[cfg_attr(
            not(durably_libsql_tests),
            ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
        )]
    );
}
