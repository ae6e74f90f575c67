//! Cron schedules on PostgreSQL (`durably_rs_schedules`, [`crate::schedules`]): their rows,
//! and the firing of slots as one transaction: the compare-and-set on the schedule's row (whose
//! row lock makes a concurrent firing wait, then find the slot gone), then its runs' enqueue.

use super::*;
use crate::schedules::{CatchUp, ScheduleFiring, ScheduleRecord};

const COLUMNS: &str = "name, job_name, cron, time_zone, input, labels, catch_up, paused, \
                       next_fire_at, last_fired_at, created_at, updated_at";

/// The compare-and-set of a firing: `$1` name, `$2` expected, `$3` next, `$4` last fired
/// (NULL keeps it), `$5` now.
const FIRE_CAS: &str = "UPDATE durably_rs_schedules SET next_fire_at = $3, \
     last_fired_at = COALESCE($4::text, last_fired_at), updated_at = $5 \
     WHERE name = $1 AND next_fire_at = $2 AND NOT paused";

fn record_from_row(row: &Row) -> std::result::Result<ScheduleRecord, Fail> {
    let input: String = row.try_get(4)?;
    let labels: String = row.try_get(5)?;
    let catch_up: String = row.try_get(6)?;
    Ok(ScheduleRecord {
        name: row.try_get(0)?,
        job_name: row.try_get(1)?,
        cron: row.try_get(2)?,
        time_zone: row.try_get(3)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        labels: parse_labels(&labels),
        catch_up: CatchUp::parse(&catch_up).unwrap_or_default(),
        paused: row.try_get(7)?,
        next_fire_at: get_ts(row, 8)?,
        last_fired_at: get_opt_ts(row, 9)?,
        created_at: get_ts(row, 10)?,
        updated_at: get_ts(row, 11)?,
    })
}

impl PostgresStore {
    pub(super) async fn upsert_schedule_row(
        &self,
        record: &ScheduleRecord,
        now: Timestamp,
    ) -> Result<ScheduleRecord> {
        let sql = format!(
            "INSERT INTO durably_rs_schedules ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, false, $8, NULL, $9, $9) \
             ON CONFLICT (name) DO UPDATE SET job_name = excluded.job_name, \
               cron = excluded.cron, time_zone = excluded.time_zone, input = excluded.input, \
               labels = excluded.labels, catch_up = excluded.catch_up, \
               next_fire_at = CASE WHEN durably_rs_schedules.cron = excluded.cron \
                 AND durably_rs_schedules.time_zone = excluded.time_zone \
                 THEN durably_rs_schedules.next_fire_at ELSE excluded.next_fire_at END, \
               updated_at = excluded.updated_at \
             RETURNING {COLUMNS}"
        );
        let input = to_json("upsert_schedule", &record.input)?;
        let labels = to_json("upsert_schedule", &record.labels)?;
        let catch_up = record.catch_up.as_text();
        let next = record.next_fire_at.to_string();
        let now = now.to_string();
        let params: [&(dyn ToSql + Sync); 9] = [
            &record.name,
            &record.job_name,
            &record.cron,
            &record.time_zone,
            &input,
            &labels,
            &catch_up,
            &next,
            &now,
        ];
        let rows = self
            .read("upsert_schedule", &sql, &params, record_from_row)
            .await?;
        rows.into_iter()
            .next()
            .ok_or_else(|| Error::storage("upsert_schedule", "the upsert returned no row"))
    }

    pub(super) async fn schedule_rows(
        &self,
        operation: &'static str,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<ScheduleRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM durably_rs_schedules {filter}");
        self.read(operation, &sql, params, record_from_row).await
    }

    /// `UPDATE … RETURNING` one schedule.
    pub(super) async fn update_schedule_row(
        &self,
        operation: &'static str,
        set_where: &str,
        name: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<ScheduleRecord>> {
        let sql = format!("UPDATE durably_rs_schedules SET {set_where} RETURNING {COLUMNS}");
        let updated = self.read(operation, &sql, params, record_from_row).await?;
        match updated.into_iter().next() {
            Some(record) => Ok(Some(record)),
            None => Ok(self
                .schedule_rows(operation, "WHERE name = $1", &[&name])
                .await?
                .into_iter()
                .next()),
        }
    }

    pub(super) async fn fire_schedule_tx(
        &self,
        firing: &ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        // Ids fixed across retries.
        let prepared: Vec<Prepared> = firing
            .runs
            .iter()
            .map(|run| Prepared::new(run, new_id_at(now), now))
            .collect::<Result<_>>()?;
        let channel = self.shared.channel.clone();
        let expected = firing.expected.to_string();
        let next = firing.next.to_string();
        let last_fired = firing.last_fired.map(|at| at.to_string());
        let now_text = now.to_string();
        for _round in 0..3 {
            let outcome = self
                .run("fire_schedule", true, |mut client, _| {
                    let (prepared, channel) = (&prepared, &channel);
                    let (expected, next, last_fired, now_text) =
                        (&expected, &next, &last_fired, &now_text);
                    async move {
                        let full = client.prepare_cached(&enqueue_sql()).await?;
                        let idem = client.prepare_cached(&idempotency_sql()).await?;
                        let tx = client.transaction().await?;
                        let moved = tx
                            .execute(
                                FIRE_CAS,
                                &[&firing.name, expected, next, last_fired, now_text],
                            )
                            .await?;
                        if moved == 0 {
                            return Ok(Some(Ok(None))); // rolled back on drop
                        }
                        let mut out = Vec::with_capacity(prepared.len());
                        for (run, p) in firing.runs.iter().zip(prepared) {
                            let statement = if p.labels_valid { &full } else { &idem };
                            let rows = tx.query(statement, &p.params(channel)).await?;
                            match resolve(run, p, &rows)? {
                                Some(Ok(enqueued)) => out.push(enqueued),
                                Some(Err(error)) => return Ok(Some(Err(error))),
                                None => return Ok(None), // a concurrent insert won: retry
                            }
                        }
                        tx.commit().await?;
                        Ok(Some(Ok(Some(out))))
                    }
                })
                .await?;
            if let Some(result) = outcome {
                return result;
            }
        }
        Err(Error::Conflict(format!(
            "Conflict after retry for schedule \"{}\": concurrent triggers kept colliding with its \
             runs. Concurrent modification detected.",
            firing.name
        )))
    }
}
