//! The migration ladders: numbered steps, each taking a database from one version to the next.
//!
//! Two ladders, each with its own version table, so that a database stays shareable with the
//! TypeScript runtime:
//! - [`UPSTREAM`]: upstream's schema versions exactly as upstream wrote them (version 1 is
//!   [`SCHEMA_V1`], byte for byte), recorded in upstream's `durably_schema_versions`, which
//!   therefore only ever holds upstream's versions;
//! - durably's own additions per backend ([`POSTGRES_OWN`], [`SQLITE_OWN`]): `durably_rs_*`
//!   tables, indexes and nullable columns (named `rs_*`), recorded in
//!   `durably_rs_schema_versions`, a table created only once a backend has an addition to
//!   record. The TypeScript runtime neither reads nor writes any of them.
//!
//! A backend applies, in one transaction, every step of a ladder above the version its table
//! records, and records each step's version. A database migrated by a newer upstream (a higher
//! version than this ladder knows) is left as it is.

use crate::store::schema::{SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4};

/// One step of a ladder: the statements that take a database from `version - 1` to `version`.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) statements: &'static [&'static str],
}

/// A ladder and the table that records how far a database has climbed it.
#[derive(Debug)]
pub(crate) struct Ladder {
    /// The version table (`version integer primary key, applied_at text not null`).
    pub(crate) table: &'static str,
    /// Whether the ladder's first step creates the version table itself (upstream's does).
    first_step_creates_table: bool,
    pub(crate) migrations: &'static [Migration],
}

impl Ladder {
    /// The steps above `current`, in order.
    pub(crate) fn pending(&self, current: i64) -> impl Iterator<Item = &'static Migration> {
        let migrations: &'static [Migration] = self.migrations;
        migrations.iter().filter(move |m| m.version > current)
    }

    /// The highest version of the ladder (0 when it is empty).
    pub(crate) fn latest(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// `CREATE TABLE IF NOT EXISTS` of the version table, in upstream's DDL style, to run
    /// before the first step; `None` when the first step creates it (upstream's version 1
    /// creates `durably_schema_versions`, and a SQLite database keeps upstream's creation
    /// order).
    pub(crate) fn create_table(&self) -> Option<String> {
        (!self.first_step_creates_table).then(|| version_table_ddl(self.table))
    }
}

fn version_table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (\"version\" integer primary key, \"applied_at\" text not null)"
    )
}

/// Upstream's schema versions (`@coji/durably`); the table is created by version 1 itself.
pub(crate) const UPSTREAM: Ladder = Ladder {
    table: "durably_schema_versions",
    first_step_creates_table: true,
    migrations: &[
        Migration {
            version: 1,
            statements: SCHEMA_V1,
        },
        Migration {
            version: 2,
            statements: SCHEMA_V2,
        },
        Migration {
            version: 3,
            statements: SCHEMA_V3,
        },
        Migration {
            version: 4,
            statements: SCHEMA_V4,
        },
    ],
};

/// The table of durably's own additions' versions.
pub(crate) const OWN_VERSIONS_TABLE: &str = "durably_rs_schema_versions";

/// durably's own additions on PostgreSQL.
///
/// Version 1, two partial indexes the TypeScript runtime ignores:
/// - `durably_rs_runs_pending_order`: the pending runs in claim order (`created_at`, then
///   `id`). Upstream's `(status, created_at)` index cannot break ties by id, so without it every
///   claim sorts the whole oldest same-millisecond group (a batch trigger of 20,000 runs: 23 ms
///   per claim). It holds pending runs only, so a claim or completion adds no entries to it.
/// - `durably_rs_runs_pending_key_order`: the pending runs that have a concurrency key, by key,
///   in claim order. The keyed claim finds a key's oldest pending run in it at once; through
///   upstream's `(status, concurrency_key)` index it read and sorted every pending run of the
///   key (at 1,250 pending runs per key, a tenth of the keyed throughput).
///
/// Version 2, one partial index:
/// - `durably_rs_waits_resumable`: the resolved waits whose run has not yet been resumed from
///   them (`first_resumed_at IS NULL`), by run. The claim finds the waiting runs to resume
///   through it; through upstream's `(status, deadline_ms, id)` index it joined every resolved
///   wait ever kept, so each claim grew with the history (10,000 sleeping runs resumed at 44
///   runs/s). A claim's resume sets `first_resumed_at`, which takes the wait out of the index.
///
/// Version 3, run priorities ([`crate::TriggerOptions::priority`]):
/// - the nullable column `durably_runs.rs_priority` (NULL is priority 0; the TypeScript runtime
///   neither reads nor writes it, so its runs have priority 0);
/// - `durably_rs_runs_pending_priority_order`: the pending runs of a priority other than 0 in
///   claim order (`rs_priority DESC, created_at, id`); runs of priority 0 stay in version 1's
///   `durably_rs_runs_pending_order` only (which pages of pending runs read too), so a queue
///   that does not use priorities pays no upkeep for this index, and a claim walks one index and
///   probes the other;
/// - `durably_rs_runs_pending_key_priority_order` on `(concurrency_key, COALESCE(rs_priority,
///   0) DESC, created_at, id)` of the pending keyed runs, in place of version 1's keyed index.
///
/// Version 4, cron schedules ([`POSTGRES_SCHEDULES`]).
///
/// Version 5, child runs ([`POSTGRES_CHILDREN`]).
///
/// Version 6, trace contexts ([`POSTGRES_TRACES`]).
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_OWN: Ladder = Ladder {
    table: OWN_VERSIONS_TABLE,
    first_step_creates_table: false,
    migrations: &[
        Migration {
            version: 1,
            statements: &[
                "CREATE INDEX IF NOT EXISTS durably_rs_runs_pending_order ON durably_runs (created_at, id) \
                 WHERE status = 'pending'",
                "CREATE INDEX IF NOT EXISTS durably_rs_runs_pending_key_order ON durably_runs \
                 (concurrency_key, created_at, id) \
                 WHERE status = 'pending' AND concurrency_key IS NOT NULL",
            ],
        },
        Migration {
            version: 2,
            statements: &[
                "CREATE INDEX IF NOT EXISTS durably_rs_waits_resumable ON durably_waits (run_id) \
                 WHERE status = 'resolved' AND first_resumed_at IS NULL",
            ],
        },
        Migration {
            version: 3,
            statements: &[
                "ALTER TABLE durably_runs ADD COLUMN IF NOT EXISTS rs_priority integer",
                "CREATE INDEX IF NOT EXISTS durably_rs_runs_pending_priority_order ON durably_runs \
                 (rs_priority DESC, created_at, id) \
                 WHERE status = 'pending' AND rs_priority IS NOT NULL",
                "CREATE INDEX IF NOT EXISTS durably_rs_runs_pending_key_priority_order ON durably_runs \
                 (concurrency_key, (COALESCE(rs_priority, 0)) DESC, created_at, id) \
                 WHERE status = 'pending' AND concurrency_key IS NOT NULL",
                "DROP INDEX IF EXISTS durably_rs_runs_pending_key_order",
            ],
        },
        Migration {
            version: 4,
            statements: POSTGRES_SCHEDULES,
        },
        Migration {
            version: 5,
            statements: POSTGRES_CHILDREN,
        },
        Migration {
            version: 6,
            statements: POSTGRES_TRACES,
        },
    ],
};

/// durably's own additions on SQLite.
///
/// Version 1, run priorities ([`crate::TriggerOptions::priority`]):
/// - the nullable column `durably_runs.rs_priority` (NULL is priority 0; the TypeScript runtime
///   neither reads nor writes it, so its runs have priority 0);
/// - `durably_rs_runs_pending_priority`: the pending runs of a priority other than 0, in claim
///   order (`rs_priority DESC`, `created_at`, then the rowid every entry ends with). Runs of
///   priority 0 stay in upstream's `(status, created_at)` index only, so a queue that does not
///   use priorities pays no index upkeep for them; a claim walks the one index and probes the
///   other;
/// - `durably_rs_runs_waiting_priority`: the same for waiting runs, which a claim resumes by
///   priority too.
///
/// Version 2, cron schedules ([`SQLITE_SCHEDULES`]).
///
/// Version 3, child runs ([`SQLITE_CHILDREN`]).
///
/// Version 4, trace contexts ([`SQLITE_TRACES`]).
pub(crate) const SQLITE_OWN: Ladder = Ladder {
    table: OWN_VERSIONS_TABLE,
    first_step_creates_table: false,
    migrations: &[
        Migration {
            version: 1,
            statements: &[
                "ALTER TABLE \"durably_runs\" ADD COLUMN \"rs_priority\" integer",
                "CREATE INDEX IF NOT EXISTS \"durably_rs_runs_pending_priority\" on \"durably_runs\" \
                 (\"rs_priority\" DESC, \"created_at\") \
                 WHERE \"status\" = 'pending' AND \"rs_priority\" IS NOT NULL",
                "CREATE INDEX IF NOT EXISTS \"durably_rs_runs_waiting_priority\" on \"durably_runs\" \
                 (\"rs_priority\" DESC, \"created_at\") \
                 WHERE \"status\" = 'waiting' AND \"rs_priority\" IS NOT NULL",
            ],
        },
        Migration {
            version: 2,
            statements: SQLITE_SCHEDULES,
        },
        Migration {
            version: 3,
            statements: SQLITE_CHILDREN,
        },
        Migration {
            version: 4,
            statements: SQLITE_TRACES,
        },
    ],
};

/// Cron schedules on PostgreSQL (`crate::schedules`): one row per schedule, timestamps as
/// upstream's fixed-width UTC text, and the due slots found by an index of the schedules that
/// are not paused. Self-contained (`IF NOT EXISTS`), so the step can move in the ladder.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_SCHEDULES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS durably_rs_schedules (name text PRIMARY KEY, job_name text NOT NULL, \
     cron text NOT NULL, time_zone text NOT NULL, input text NOT NULL, labels text NOT NULL, \
     catch_up text NOT NULL, paused boolean NOT NULL DEFAULT false, next_fire_at text NOT NULL, \
     last_fired_at text, created_at text NOT NULL, updated_at text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS durably_rs_schedules_due ON durably_rs_schedules (next_fire_at) \
     WHERE NOT paused",
];

/// Cron schedules on SQLite (`crate::schedules`), as on PostgreSQL ([`POSTGRES_SCHEDULES`]
/// when built with it), `paused` an integer 0/1. Self-contained (`IF NOT EXISTS`).
pub(crate) const SQLITE_SCHEDULES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS durably_rs_schedules (name text PRIMARY KEY, job_name text NOT NULL, \
     cron text NOT NULL, time_zone text NOT NULL, input text NOT NULL, labels text NOT NULL, \
     catch_up text NOT NULL, paused integer NOT NULL DEFAULT 0, next_fire_at text NOT NULL, \
     last_fired_at text, created_at text NOT NULL, updated_at text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS durably_rs_schedules_due ON durably_rs_schedules (next_fire_at) \
     WHERE paused = 0",
];

/// Child runs on PostgreSQL ([`crate::StepContext::invoke`]): the nullable columns
/// `durably_runs.rs_parent_run_id` (the parent of a child run) and `rs_parent_wait_id` (the
/// parent's wait its end resolves), NULL for every other run (the TypeScript runtime neither
/// reads nor writes them); `durably_rs_runs_parent` lists a parent's children,
/// `durably_rs_runs_parent_wait` tells whether the children of one wait are settled. Both
/// indexes are partial, so runs that are not children cost them nothing. Self-contained.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_CHILDREN: &[&str] = &[
    "ALTER TABLE durably_runs ADD COLUMN IF NOT EXISTS rs_parent_run_id text",
    "ALTER TABLE durably_runs ADD COLUMN IF NOT EXISTS rs_parent_wait_id text",
    "CREATE INDEX IF NOT EXISTS durably_rs_runs_parent ON durably_runs (rs_parent_run_id) \
     WHERE rs_parent_run_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS durably_rs_runs_parent_wait ON durably_runs \
     (rs_parent_wait_id, status) WHERE rs_parent_wait_id IS NOT NULL",
];

/// Child runs on SQLite, as on PostgreSQL ([`POSTGRES_CHILDREN`] when built with it). A
/// column already there ("duplicate column name") counts as applied.
pub(crate) const SQLITE_CHILDREN: &[&str] = &[
    "ALTER TABLE \"durably_runs\" ADD COLUMN \"rs_parent_run_id\" text",
    "ALTER TABLE \"durably_runs\" ADD COLUMN \"rs_parent_wait_id\" text",
    "CREATE INDEX IF NOT EXISTS \"durably_rs_runs_parent\" on \"durably_runs\" \
     (\"rs_parent_run_id\") WHERE \"rs_parent_run_id\" IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS \"durably_rs_runs_parent_wait\" on \"durably_runs\" \
     (\"rs_parent_wait_id\", \"status\") WHERE \"rs_parent_wait_id\" IS NOT NULL",
];

/// Trace contexts on PostgreSQL ([`crate::store::NewRun::trace_context`]): the nullable column
/// `durably_runs.rs_trace_context`, the W3C `traceparent` of the span that triggered the run
/// (feature `otel`), NULL for every other run (the TypeScript runtime neither reads nor writes
/// it). A column rather than a `durably_rs_*` table: it is written with the run's insert and
/// read with its claim, both of which already touch the row, so it costs no join and no second
/// statement; no index (nothing searches by it). Self-contained.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_TRACES: &[&str] =
    &["ALTER TABLE durably_runs ADD COLUMN IF NOT EXISTS rs_trace_context text"];

/// Trace contexts on SQLite, as on PostgreSQL ([`POSTGRES_TRACES`] when built with it). A
/// column already there ("duplicate column name") counts as applied.
pub(crate) const SQLITE_TRACES: &[&str] =
    &["ALTER TABLE \"durably_runs\" ADD COLUMN \"rs_trace_context\" text"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_are_numbered_from_one_without_gaps() {
        #[cfg(feature = "postgres")]
        let ladders = [&UPSTREAM, &POSTGRES_OWN, &SQLITE_OWN];
        #[cfg(not(feature = "postgres"))]
        let ladders = [&UPSTREAM, &SQLITE_OWN];
        for ladder in ladders {
            for (i, migration) in ladder.migrations.iter().enumerate() {
                assert_eq!(migration.version, i as i64 + 1, "{}", ladder.table);
            }
        }
        assert_eq!(UPSTREAM.latest(), crate::store::SCHEMA_VERSION);
        assert_eq!(UPSTREAM.pending(0).count(), 4);
        assert_eq!(UPSTREAM.pending(1).count(), 3);
        assert_eq!(UPSTREAM.pending(4).count(), 0);
        assert_eq!(SQLITE_OWN.latest(), 4);
    }

    #[test]
    fn the_upstream_ladder_creates_its_table_as_upstream_does() {
        // Version 1's own DDL for `durably_schema_versions` is the style ours follows.
        assert!(SCHEMA_V1.contains(&version_table_ddl(UPSTREAM.table).as_str()));
        assert_eq!(UPSTREAM.create_table(), None);
        assert!(SQLITE_OWN.create_table().is_some());
    }
}
