//! Remote libSQL (Turso, sqld, `tursodb --sync-server`) over Hrana-over-HTTP (feature
//! `libsql`). For now the protocol client only ([`hrana`]); the store that runs the SQLite
//! store's SQL through it follows (docs/libsql.md).

pub mod hrana;

// Every statement of the SQLite schema, run on the test server.
#[cfg(all(test, feature = "sqlite"))]
mod server_tests;
