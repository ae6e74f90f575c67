//! Migrations on PostgreSQL: climbs the ladders of [`crate::store::migrations`].

use super::*;

/// Applies the steps of `ladder` above the version its table records, recording each (inside
/// the migration's transaction). Reads only when the database is up to date: every worker
/// migrates at start, and `CREATE INDEX IF NOT EXISTS` locks the table even when the index is
/// there.
pub(super) async fn climb(
    tx: &deadpool_postgres::Transaction<'_>,
    ladder: &Ladder,
) -> std::result::Result<(), Fail> {
    let current = version_in(tx, ladder.table).await?;
    if current >= ladder.latest() {
        return Ok(());
    }
    if let Some(create) = ladder.create_table() {
        tx.batch_execute(&create).await?;
    }
    for migration in ladder.pending(current) {
        for statement in migration.statements {
            tx.batch_execute(statement).await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO \"{}\" (version, applied_at) VALUES ($1::integer, $2) \
                 ON CONFLICT DO NOTHING",
                ladder.table
            ),
            &[&(migration.version as i32), &Timestamp::now().to_string()],
        )
        .await?;
    }
    Ok(())
}

/// The upstream schema version: `MAX(version)` of `durably_schema_versions` in the current
/// schema, or 0 without the table.
pub(super) async fn current_version<C: deadpool_postgres::GenericClient>(
    client: &C,
) -> std::result::Result<i64, Fail> {
    version_in(client, UPSTREAM.table).await
}

/// `MAX(version)` of a version table in the current schema, or 0 without the table.
pub(super) async fn version_in<C: deadpool_postgres::GenericClient>(
    client: &C,
    table: &str,
) -> std::result::Result<i64, Fail> {
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?;
    if !exists.try_get::<_, bool>(0)? {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0)::bigint FROM \"{table}\""),
            &[],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)?)
}
