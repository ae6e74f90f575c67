//! Remote libSQL (Turso, sqld, `tursodb --sync-server`) over Hrana-over-HTTP (feature
//! `libsql`): the protocol client ([`hrana`]) and [`LibsqlStore`], which runs the SQLite
//! store's SQL through it (docs/libsql.md).
//!
//! The store keeps no interactive transaction across requests: every write is one statement
//! or one conditional batch (`BEGIN IMMEDIATE … COMMIT`), lease-holder writes fenced in the
//! statement and, for the statements after them, by guard steps that refuse the whole batch
//! when the fenced write matched nothing.

mod conn;
mod enqueue;
pub mod hrana;
mod migrate;
mod rows;
mod runs;
mod schedules;
mod steps;
mod store;
mod waits;

pub use store::{LibsqlOptions, LibsqlStore};

// Every statement of the SQLite schema, run on the test server.
#[cfg(all(test, feature = "sqlite"))]
mod server_tests;
