//! The PostgreSQL server's own count of a workload's transactions and WAL flushes, for
//! `durably bench --backend postgres` (issue 27): `pg_stat_database` and `pg_stat_wal`
//! (PostgreSQL 14 or later) read before and after the workload's drain.
//!
//! A backend publishes its statistics at most once a second while busy, and an idle one only
//! about 10 s later, so the counters lag what happened. To read exact figures, the workload's
//! connections are told apart by their `application_name` ([`ServerProbe::app_name`]) and the
//! reads wait until those connections have closed: a backend publishes what it has pending
//! when it exits. The probe's own connection calls `pg_stat_force_next_flush()` (PostgreSQL 15
//! or later) before each read and subtracts its own transactions. On PostgreSQL 14 the probe's
//! own few transactions are not subtracted.
//!
//! The statistics are database-wide (`pg_stat_wal`: server-wide): whatever else runs on the
//! server during the drain (other databases' WAL, autovacuum, other clients of this database)
//! is counted too. Stats that cannot be read (no permission, an old server, TLS required: the
//! probe connects without TLS) leave the fields out; they never fail the bench.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::round;

/// The counters read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct ServerCounters {
    /// `pg_stat_database.xact_commit` of the database.
    pub commits: u64,
    /// `pg_stat_database.xact_rollback` of the database.
    pub rollbacks: u64,
    /// `pg_stat_wal.wal_records`.
    pub wal_records: u64,
    /// `pg_stat_wal.wal_bytes`.
    pub wal_bytes: u64,
    /// `pg_stat_wal.wal_write`: writes of WAL buffers to disk.
    pub wal_writes: u64,
    /// `pg_stat_wal.wal_sync`: WAL flushes (fsync/fdatasync) to disk.
    pub wal_syncs: u64,
}

/// The difference of two readings, as per-job fields of a workload's JSON line.
///
/// `own_transactions` are the probe's own transactions counted in between, subtracted from
/// the commits. A counter that went backwards (statistics reset in between) gives no fields.
pub(super) fn per_job_fields(
    before: ServerCounters,
    after: ServerCounters,
    own_transactions: u64,
    jobs: u64,
) -> Option<serde_json::Value> {
    let delta = |a: u64, b: u64| a.checked_sub(b);
    let commits = delta(after.commits, before.commits)?.saturating_sub(own_transactions);
    let rollbacks = delta(after.rollbacks, before.rollbacks)?;
    let wal_records = delta(after.wal_records, before.wal_records)?;
    let wal_bytes = delta(after.wal_bytes, before.wal_bytes)?;
    let wal_writes = delta(after.wal_writes, before.wal_writes)?;
    let wal_syncs = delta(after.wal_syncs, before.wal_syncs)?;
    let per_job = |n: u64| json!(round(n as f64 / jobs.max(1) as f64));
    Some(json!({
        "server_commits_per_job": per_job(commits),
        "server_rollbacks_per_job": per_job(rollbacks),
        "wal_records_per_job": per_job(wal_records),
        "wal_bytes_per_job": per_job(wal_bytes),
        "wal_writes_per_job": per_job(wal_writes),
        "wal_syncs_per_job": per_job(wal_syncs),
    }))
}

/// How long [`ServerProbe::read_after_close`] waits for a workload's connections to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection that reads the server's counters.
pub(super) struct ServerProbe {
    client: Client,
    /// Whether the server has `pg_stat_force_next_flush()` (PostgreSQL 15 or later).
    can_force: bool,
    /// Statements this connection has run (each one transaction).
    statements: u64,
}

/// A reading, with where the probe's own statement count stood when it was taken.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    counters: ServerCounters,
    statements: u64,
}

impl ServerProbe {
    /// Connects to `url` without TLS; `None` (with a note on stderr) when the connection or a
    /// first reading fails, or the server is older than PostgreSQL 14.
    pub async fn connect(url: &str) -> Option<ServerProbe> {
        match Self::try_connect(url).await {
            Ok(probe) => Some(probe),
            Err(error) => {
                eprintln!("bench: no server statistics (pg_stat_database, pg_stat_wal): {error}");
                None
            }
        }
    }

    async fn try_connect(url: &str) -> Result<ServerProbe, Box<dyn std::error::Error>> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        let mut probe = ServerProbe {
            client,
            can_force: false,
            statements: 0,
        };
        let version: u64 = probe
            .value("SELECT current_setting('server_version_num')")
            .await?
            .parse()?;
        if version < 140_000 {
            return Err(
                format!("the server's version {version} has no pg_stat_wal (14 or later)").into(),
            );
        }
        probe.can_force = version >= 150_000;
        probe.read().await?;
        Ok(probe)
    }

    /// The `application_name` that marks connections of a workload, `tag` telling workloads of
    /// this process apart.
    pub fn app_name(tag: &str) -> String {
        format!("durably-bench-{}-{tag}", std::process::id())
    }

    /// The first column of the first row of a one-statement `sql`.
    async fn value(&mut self, sql: &str) -> Result<String, tokio_postgres::Error> {
        let messages = self.client.simple_query(sql).await;
        self.statements += 1;
        Ok(messages?
            .into_iter()
            .find_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Reads the counters now (forcing this connection's own statistics out first on
    /// PostgreSQL 15 or later).
    async fn read(&mut self) -> Result<Reading, Box<dyn std::error::Error>> {
        if self.can_force {
            self.value("SELECT pg_stat_force_next_flush()").await?;
        }
        let statements = self.statements;
        let row = self
            .value(
                "SELECT concat_ws(' ', d.xact_commit, d.xact_rollback, w.wal_records, \
                 w.wal_bytes::bigint, w.wal_write, w.wal_sync) \
                 FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
            )
            .await?;
        let numbers = row
            .split(' ')
            .map(str::parse::<u64>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("unexpected statistics row {row:?}: {e}"))?;
        let [
            commits,
            rollbacks,
            wal_records,
            wal_bytes,
            wal_writes,
            wal_syncs,
        ] = numbers[..]
        else {
            return Err(format!("unexpected statistics row {row:?}").into());
        };
        Ok(Reading {
            counters: ServerCounters {
                commits,
                rollbacks,
                wal_records,
                wal_bytes,
                wal_writes,
                wal_syncs,
            },
            statements,
        })
    }

    /// Waits until no connection named `app_name` is open (at most [`CLOSE_TIMEOUT`]), then
    /// reads: the closed connections' statistics are then all published. `None` (with a note
    /// on stderr) when that fails or times out.
    pub async fn read_after_close(&mut self, app_name: &str) -> Option<Reading> {
        match self.try_read_after_close(app_name).await {
            Ok(reading) => Some(reading),
            Err(error) => {
                eprintln!("bench: no server statistics for this workload: {error}");
                None
            }
        }
    }

    async fn try_read_after_close(
        &mut self,
        app_name: &str,
    ) -> Result<Reading, Box<dyn std::error::Error>> {
        let quoted = app_name.replace('\'', "''");
        let count = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{quoted}' \
             AND pid <> pg_backend_pid()"
        );
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.value(&count).await? != "0" {
            if Instant::now() > deadline {
                return Err(format!(
                    "connections named {app_name} still open after {CLOSE_TIMEOUT:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A backend leaves pg_stat_activity just before it publishes its last statistics
        // (both at exit, in that order): give the last one that moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.read().await
    }

    /// The per-job fields between `before` and `after` (see [`per_job_fields`]).
    pub fn fields(&self, before: Reading, after: Reading, jobs: u64) -> Option<serde_json::Value> {
        // With the flush forced, the statements from the first reading's select to the second
        // reading's flush are all counted in between; without it, some may not be yet.
        let own = if self.can_force {
            after.statements - before.statements
        } else {
            0
        };
        per_job_fields(before.counters, after.counters, own, jobs)
    }
}

/// Copies `fields` (an object) into `line`.
pub(super) fn add_fields(line: &mut serde_json::Value, fields: serde_json::Value) {
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
}

/// `url` with `application_name` set to `name` (a `postgres://` URL or a key-value string).
pub(super) fn with_app_name(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(base: u64) -> ServerCounters {
        ServerCounters {
            commits: base,
            rollbacks: base / 10,
            wal_records: base * 3,
            wal_bytes: base * 1000,
            wal_writes: base / 2,
            wal_syncs: base / 4,
        }
    }

    #[test]
    fn per_job_fields_are_the_deltas_over_the_jobs_minus_the_probes_own_transactions() {
        let before = counters(1000);
        let after = ServerCounters {
            commits: 1000 + 503,
            rollbacks: 100 + 2,
            wal_records: 3000 + 4000,
            wal_bytes: 1_000_000 + 1_234_567,
            wal_writes: 500 + 250,
            wal_syncs: 250 + 135,
        };
        let fields = per_job_fields(before, after, 3, 1000).expect("fields");
        assert_eq!(
            fields,
            json!({
                "server_commits_per_job": 0.5,
                "server_rollbacks_per_job": 0.002,
                "wal_records_per_job": 4.0,
                "wal_bytes_per_job": 1234.567,
                "wal_writes_per_job": 0.25,
                "wal_syncs_per_job": 0.135,
            })
        );
    }

    #[test]
    fn a_reset_in_between_gives_no_fields_and_zero_jobs_do_not_divide_by_zero() {
        assert_eq!(per_job_fields(counters(1000), counters(10), 0, 100), None);
        let fields = per_job_fields(counters(0), counters(40), 100, 0).expect("fields");
        assert_eq!(fields["server_commits_per_job"], json!(0.0));
        assert_eq!(fields["wal_syncs_per_job"], json!(10.0));
    }

    #[test]
    fn the_app_name_goes_into_urls_and_key_value_strings() {
        assert_eq!(
            with_app_name("postgres://u@h/db", "x"),
            "postgres://u@h/db?application_name=x"
        );
        assert_eq!(
            with_app_name("postgresql://u@h/db?sslmode=disable", "x"),
            "postgresql://u@h/db?sslmode=disable&application_name=x"
        );
        assert_eq!(
            with_app_name("host=h dbname=db", "x"),
            "host=h dbname=db application_name=x"
        );
        let parsed: tokio_postgres::Config =
            with_app_name("postgres://u@h/db?sslmode=disable", "x")
                .parse()
                .expect("parses");
        assert_eq!(parsed.get_application_name(), Some("x"));
    }
}
