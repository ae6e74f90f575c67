//! What a lease holder records as its run executes, on PostgreSQL: step checkpoints (through
//! `batch.rs`, the group commit), step attempts, progress and logs, fenced on the run's lease
//! (a log when it has a fence).

use super::*;

impl PostgresStore {
    /// [`Store::persist_step`]: through `batch.rs` (the group commit; alone when it is off).
    pub(super) async fn persist_step_batched(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let id = new_id_at(now);
        let output = step
            .output
            .as_ref()
            .map(|o| to_json("persist_step", o))
            .transpose()?;
        let index = i32::try_from(step.index)
            .map_err(|_| Error::Validation(format!("step index {} is too large", step.index)))?;
        let attempt = step
            .attempt
            .as_ref()
            .map(|a| -> Result<_> {
                let metadata = a
                    .metadata
                    .as_ref()
                    .map(|m| to_json("persist_step", m))
                    .transpose()?;
                Ok((a.id.clone(), a.begun, metadata))
            })
            .transpose()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batch(
            "persist_step",
            batch::Request::Persist(batch::PersistRequest {
                run_id: fence.run_id.clone(),
                generation: fence.generation,
                step_id: id.clone(),
                name: step.name.clone(),
                index,
                status: step.status.as_str(),
                output,
                error: step.error.clone(),
                started_at: step.started_at.to_string(),
                completed_at: now.to_string(),
                attempt,
                reply,
            }),
        )
        .await?;
        let (fenced, inserted, mine) = answer
            .await
            .map_err(|_| Error::storage("persist_step", "the PostgreSQL write task stopped"))??;
        if !mine && !fenced {
            return Ok(None);
        }
        if !mine && !inserted {
            return Err(Error::Conflict(format!(
                "Step \"{}\" of run {} is already completed",
                step.name, fence.run_id
            )));
        }
        Ok(Some(Step {
            id,
            run_id: fence.run_id.clone(),
            name: step.name,
            index: step.index,
            status: step.status,
            output: step.output.filter(|o| !o.is_null()),
            error: step.error,
            started_at: step.started_at,
            completed_at: Some(now),
        }))
    }

    /// [`Store::begin_step_attempt`]: the attempt row, fenced.
    pub(super) async fn insert_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let metadata = attempt
            .metadata
            .as_ref()
            .map(|m| to_json("begin_step_attempt", m))
            .transpose()?;
        let index = i32::try_from(attempt.step_index).map_err(|_| {
            Error::Validation(format!("step index {} is too large", attempt.step_index))
        })?;
        let (started_at, now) = (attempt.started_at.to_string(), now.to_string());
        // A retry after a lost reply finds the row its first try inserted.
        let sql = "WITH ins AS (INSERT INTO durably_step_attempts (id, run_id, step_name, \
               step_index, lease_generation, status, metadata, error, started_at, completed_at) \
             SELECT $3, r.id, $4, $5::integer, r.lease_generation, 'started', $6, NULL, $7, NULL \
               FROM durably_runs r WHERE r.id = $1 AND r.status = 'leased' \
               AND r.lease_generation = $2::bigint AND r.lease_expires_at > $8 \
             ON CONFLICT DO NOTHING RETURNING id) \
             SELECT (SELECT count(*) FROM ins) > 0 OR EXISTS (SELECT 1 FROM durably_step_attempts \
               WHERE id = $3 AND run_id = $1 AND lease_generation = $2::bigint)";
        let params: [&(dyn ToSql + Sync); 8] = [
            &fence.run_id,
            &fence.generation,
            &attempt.id,
            &attempt.step_name,
            &index,
            &metadata,
            &started_at,
            &now,
        ];
        let begun = self
            .read("begin_step_attempt", sql, &params, |row| count_bool(row, 0))
            .await?;
        Ok(begun.first() == Some(&true))
    }

    /// [`Store::set_step_attempt_metadata`]: fenced, idempotent.
    pub(super) async fn update_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let metadata = metadata
            .as_ref()
            .map(|m| to_json("set_step_attempt_metadata", m))
            .transpose()?;
        let now = now.to_string();
        // Idempotent: a retry after a lost reply writes the same value again.
        let sql = "WITH u AS (UPDATE durably_step_attempts a SET metadata = $4 \
               FROM durably_runs r WHERE a.id = $3 AND a.run_id = $1 \
               AND a.lease_generation = $2::bigint AND a.status = 'started' \
               AND r.id = $1 AND r.status = 'leased' AND r.lease_generation = $2::bigint \
               AND r.lease_expires_at > $5 RETURNING a.id) \
             SELECT count(*) FROM u";
        let params: [&(dyn ToSql + Sync); 5] = [
            &fence.run_id,
            &fence.generation,
            &attempt_id,
            &metadata,
            &now,
        ];
        let changed = self
            .read("set_step_attempt_metadata", sql, &params, |row| {
                count(row, 0)
            })
            .await?;
        Ok(changed.first() == Some(&1))
    }

    /// [`Store::update_progress`]: fenced.
    pub(super) async fn write_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let progress = progress
            .as_ref()
            .map(|p| to_json("update_progress", p))
            .transpose()?;
        let now_text = now.to_string();
        let sql = format!("UPDATE durably_runs SET progress = $3, updated_at = $4 WHERE {FENCED}");
        let changed = self
            .run("update_progress", true, |client, _| {
                let (sql, progress, now_text) = (&sql, &progress, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, progress, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }

    /// [`Store::append_log`]: fenced when `fence` is given.
    pub(super) async fn insert_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let id = new_id_at(now);
        let data = log
            .data
            .as_ref()
            .map(|d| to_json("append_log", d))
            .transpose()?;
        let now_text = now.to_string();
        let generation = fence.map(|f| f.generation);
        // Unfenced when `$8` is NULL; a retry recognises its own earlier insert by id.
        let sql = format!(
            "INSERT INTO durably_logs ({LOG_COLUMNS}) \
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text \
             WHERE $8::bigint IS NULL OR EXISTS (SELECT 1 FROM durably_runs \
               WHERE id = $2 AND status = 'leased' AND lease_generation = $8::bigint) \
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING id"
        );
        let inserted = self
            .run("append_log", true, |client, _| {
                let (sql, id, data, now_text, log) = (&sql, &id, &data, &now_text, &log);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[
                                id,
                                &log.run_id,
                                &log.step_name,
                                &log.level.as_str(),
                                &log.message,
                                data,
                                now_text,
                                &generation,
                            ],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((inserted == 1).then(|| Log {
            id,
            run_id: log.run_id,
            step_name: log.step_name,
            level: log.level,
            message: log.message,
            data: log.data.filter(|d| !d.is_null()),
            created_at: now,
        }))
    }
}
