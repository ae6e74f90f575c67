//! Migrations on libSQL: both ladders (upstream's and the SQLite store's own,
//! [`crate::store::migrations`]) exactly as the SQLite store applies them, all missing steps
//! and their version rows in one transaction.

use super::conn::{Db, Tx, scalar_bool, stmt};
use super::hrana::Statement;
use crate::error::{Error, Result};
use crate::store::migrations::{Ladder, SQLITE_OWN, UPSTREAM};
use crate::time::Timestamp;

/// How often a migration that failed (another process migrating at the same time) reads the
/// versions again.
const ATTEMPTS: usize = 3;

pub(super) async fn migrate(db: &Db) -> Result<()> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        let mut statements = Vec::new();
        for ladder in [&UPSTREAM, &SQLITE_OWN] {
            statements.extend(missing(db, ladder).await?);
        }
        if statements.is_empty() {
            return Ok(());
        }
        let mut tx = Tx::new();
        for statement in statements.iter().cloned() {
            tx.push(statement);
        }
        match db.transaction("migrate", tx).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(refusal)) => {
                last_error = Some(refusal.into_error("migrate"));
            }
            // SQLite has no `ADD COLUMN IF NOT EXISTS`: a column already there (a database
            // whose version table was lost) is the step already applied. Apply the steps one
            // by one then.
            Err(error) if error.to_string().contains("duplicate column") => {
                return one_by_one(db, statements).await;
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::storage("migrate", "the migration did not commit")))
}

/// The statements that take the database up `ladder`, with their version rows.
async fn missing(db: &Db, ladder: &Ladder) -> Result<Vec<Statement>> {
    let current = version_in(db, ladder.table).await?;
    if current >= ladder.latest() {
        return Ok(Vec::new());
    }
    let mut out: Vec<Statement> = ladder
        .create_table()
        .into_iter()
        .map(Statement::new)
        .collect();
    for migration in ladder.pending(current) {
        out.extend(migration.statements.iter().map(|s| Statement::new(*s)));
        out.push(stmt!(
            format!(
                "INSERT OR IGNORE INTO \"{}\" (version, applied_at) VALUES (?1, ?2)",
                ladder.table
            ),
            migration.version,
            Timestamp::now()
        ));
    }
    Ok(out)
}

async fn one_by_one(db: &Db, statements: Vec<Statement>) -> Result<()> {
    for statement in statements {
        let column = statement.sql.starts_with("ALTER TABLE")
            && statement.sql.contains("ADD COLUMN")
            || statement.sql.contains("add column");
        match db.client.execute(statement).await {
            Err(e) if column && e.to_string().contains("duplicate column") => {}
            result => {
                result.map_err(|e| Error::storage("migrate", e))?;
            }
        }
    }
    Ok(())
}

/// The upstream schema version (0 before the first migration).
pub(super) async fn current_version(db: &Db) -> Result<i64> {
    version_in(db, UPSTREAM.table).await
}

/// `MAX(version)` of a version table, or 0 when it does not exist.
async fn version_in(db: &Db, table: &str) -> Result<i64> {
    let exists = db
        .read(
            "schema_version",
            stmt!(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                table
            ),
        )
        .await?;
    if !scalar_bool("schema_version", &exists)? {
        return Ok(0);
    }
    let version = db
        .read(
            "schema_version",
            Statement::new(format!("SELECT COALESCE(MAX(version), 0) FROM \"{table}\"")),
        )
        .await?;
    match version.rows.first() {
        Some(values) => super::conn::Row::new("schema_version", values).int(0),
        None => Ok(0),
    }
}
