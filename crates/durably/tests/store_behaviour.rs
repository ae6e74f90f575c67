//! The behaviour suite (`durably::testing::behaviour`, exported for any backend): the public
//! API's end-to-end guarantees on every backend of this crate: SQLite file, SQLite in memory,
//! PostgreSQL.
mod common;

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
