//! The dashboard's overview on PostgreSQL ([`Store::run_overview`], [`Store::run_counts`]):
//! its reads sent at once, assembled by `OverviewRows` as on every backend.

use super::*;

/// [`Store::run_overview`] and [`Store::run_counts`]: runs per status.
const OVERVIEW_STATUSES: &str = "SELECT status, COUNT(*) FROM durably_runs GROUP BY status";

/// The oldest pending run.
const OVERVIEW_OLDEST_PENDING: &str = "SELECT id, job_name, created_at FROM durably_runs \
     WHERE status = 'pending' ORDER BY created_at, id LIMIT 1";

impl PostgresStore {
    /// [`Store::run_overview`]: its four reads at once, assembled by `OverviewRows`.
    pub(super) async fn read_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        use crate::overview::{EndedGroup, EndedRun, OVERVIEW_SAMPLE, OverviewRows};
        const OP: &str = "run_overview";
        let since = window.start(now).to_string();
        let key_len = window.key_len() as i32;
        let limit = OVERVIEW_SAMPLE as i64;
        let ended_params: [&(dyn ToSql + Sync); 2] = [&since, &key_len];
        let sample_params: [&(dyn ToSql + Sync); 2] = [&since, &limit];
        let statuses = self.read(OP, OVERVIEW_STATUSES, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?))
        });
        let oldest = self.read(OP, OVERVIEW_OLDEST_PENDING, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?, get_ts(row, 2)?))
        });
        let ended = self.read(
            OP,
            "SELECT job_name, substr(completed_at, 1, $2), status, COUNT(*) FROM durably_runs \
             WHERE status IN ('completed', 'failed') AND completed_at >= $1 GROUP BY 1, 2, 3",
            &ended_params,
            |row| {
                Ok(EndedGroup {
                    job_name: row.try_get(0)?,
                    bucket: row.try_get(1)?,
                    status: row.try_get(2)?,
                    count: row.try_get(3)?,
                })
            },
        );
        let sample = self.read(
            OP,
            "SELECT r.job_name, r.created_at, r.started_at, r.completed_at, \
             COALESCE(w.resolved_at, w.deadline_at) FROM durably_runs r \
             LEFT JOIN durably_waits w ON w.run_id = r.id AND w.name = 'delay' \
             WHERE r.status IN ('completed', 'failed') AND r.completed_at >= $1 \
             ORDER BY r.completed_at DESC LIMIT $2",
            &sample_params,
            |row| {
                Ok(EndedRun {
                    job_name: row.try_get(0)?,
                    created_at: get_ts(row, 1)?,
                    started_at: get_opt_ts(row, 2)?,
                    completed_at: get_ts(row, 3)?,
                    delay_end: get_opt_ts(row, 4)?,
                })
            },
        );
        let (statuses, oldest, ended, sample) = futures::join!(statuses, oldest, ended, sample);
        let rows = OverviewRows {
            statuses: statuses?,
            oldest_pending: oldest?.pop(),
            ended: ended?,
            sample: sample?,
        };
        Ok(rows.assemble(now, window))
    }

    /// [`Store::run_counts`]: the counts per status and the oldest pending run.
    pub(super) async fn read_run_counts(
        &self,
        now: Timestamp,
    ) -> Result<crate::overview::RunCounts> {
        const OP: &str = "run_counts";
        let statuses = self.read(OP, OVERVIEW_STATUSES, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?))
        });
        let oldest = self.read(OP, OVERVIEW_OLDEST_PENDING, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?, get_ts(row, 2)?))
        });
        let (statuses, oldest) = futures::join!(statuses, oldest);
        let rows = crate::overview::OverviewRows {
            statuses: statuses?,
            oldest_pending: oldest?.pop(),
            ..Default::default()
        };
        Ok(rows.counts(now))
    }
}
