//! The SQLite store's schema on the libSQL test server (`tursodb --sync-server`): every
//! statement of both migration ladders runs through the Hrana client, and the server ends with
//! the tables and indexes a local SQLite database gets from the same statements. Ignored
//! without the server binary (tests/libsql_support).

use std::collections::BTreeSet;

use super::hrana::{HranaClient, Statement, Value};
use crate::store::migrations::{Ladder, SQLITE_OWN, UPSTREAM};

#[path = "../../../tests/libsql_support/mod.rs"]
mod support;

fn statements() -> Vec<String> {
    let mut statements = Vec::new();
    for ladder in [&UPSTREAM, &SQLITE_OWN] {
        statements.extend(ladder_statements(ladder));
    }
    statements
}

fn ladder_statements(ladder: &Ladder) -> Vec<String> {
    let mut out: Vec<String> = ladder.create_table().into_iter().collect();
    for migration in ladder.pending(0) {
        out.extend(migration.statements.iter().map(|s| s.to_string()));
        out.push(format!(
            "INSERT OR IGNORE INTO \"{}\" (version, applied_at) VALUES ({}, '2025-01-01T00:00:00.000Z')",
            ladder.table, migration.version
        ));
    }
    out
}

/// `(type, name, tbl_name)` of every table and index, skipping SQLite's own.
const OBJECTS: &str = "SELECT type, name, tbl_name FROM sqlite_master \
     WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name";

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn every_statement_of_the_sqlite_schema_runs_on_the_test_server() {
    let server = support::TestServer::start();
    let client = HranaClient::new(&server.url, None).unwrap();
    let statements = statements();
    assert!(statements.len() > 30, "{}", statements.len());
    for sql in &statements {
        client
            .execute(Statement::new(sql.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let remote: BTreeSet<Vec<String>> = client
        .execute(OBJECTS)
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|row| row.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .collect();

    let local = rusqlite::Connection::open_in_memory().unwrap();
    for sql in &statements {
        local.execute_batch(sql).unwrap();
    }
    let mut query = local.prepare(OBJECTS).unwrap();
    let expected: BTreeSet<Vec<String>> = query
        .query_map([], |row| Ok(vec![row.get(0)?, row.get(1)?, row.get(2)?]))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(remote, expected);

    let versions = client
        .execute("SELECT MAX(version) FROM durably_schema_versions")
        .await
        .unwrap();
    assert_eq!(
        versions.scalar(),
        Some(&Value::Integer(crate::store::SCHEMA_VERSION))
    );
}
