//! The end of a run and after, on PostgreSQL: completion, failure and suspension of a lease
//! holder's run ([`Store::finish_run`]), cancel, resume, deletion and retention (purge), and
//! the admin patch ([`RunAdmin`]).

use super::*;

impl PostgresStore {
    /// [`Store::finish_run`]: the transition, then the hand-off claim if asked.
    pub(super) async fn finish_with(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let claim = then_claim
            .filter(|next| next.max > 0)
            .map(|next| (next.clone(), now));
        match transition {
            Transition::Wait { wait_id } => {
                let landed = self.suspend_run(fence, &wait_id, now).await?;
                let claimed = match claim {
                    Some((next, now)) if landed => match self.claim(&next, now).await {
                        Ok(runs) => runs,
                        Err(error) => {
                            tracing::warn!(%error, "claim after suspension failed");
                            Vec::new()
                        }
                    },
                    _ => Vec::new(),
                };
                Ok(Finished { landed, claimed })
            }
            Transition::Complete { output } => {
                let (landed, claimed) = self.complete(fence, output, now, claim).await?;
                Ok(Finished { landed, claimed })
            }
            Transition::Fail { error } => {
                // A failed run keeps its steps for a resume (`Store::resume_run`).
                let drop_steps = false;
                let landed = self
                    .finish(
                        "fail_run",
                        fence,
                        "status = 'failed', error = $3",
                        "failed",
                        Some(error),
                        now,
                        drop_steps,
                    )
                    .await?;
                // Failures are rare: their claim is a second statement.
                let claimed = match claim {
                    Some((next, now)) => match self.claim(&next, now).await {
                        Ok(runs) => runs,
                        Err(error) => {
                            tracing::warn!(%error, "claim after failure failed");
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                Ok(Finished { landed, claimed })
            }
        }
    }

    /// [`Store::cancel_run`]: one statement, with the cancel notice.
    pub(super) async fn cancel_one(&self, id: &str, now: Timestamp) -> Result<bool> {
        let drop_steps = !self.preserve_steps;
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let prefix = format!("{NOTICE_CANCEL}{}:", self.shared.origin);
        let sql = "WITH u AS (UPDATE durably_runs SET status = 'cancelled', lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $2, updated_at = $2 \
               WHERE id = $1 AND status IN ('pending', 'leased', 'waiting') RETURNING id), \
             d AS (DELETE FROM durably_steps WHERE $3::boolean AND run_id IN (SELECT id FROM u)), \
             cw AS (UPDATE durably_waits SET status = 'cancelled', resolved_at = $2 \
               WHERE run_id IN (SELECT id FROM u) AND status = 'pending'), \
             note AS (SELECT pg_notify($4::text, $5::text || id) FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)";
        let params: [&(dyn ToSql + Sync); 5] = [&id, &now_text, &drop_steps, &channel, &prefix];
        let changed = self
            .read("cancel_run", sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    /// [`Store::resume_run`]: one statement, then the reason when it resumed nothing.
    pub(super) async fn resume_failed(&self, id: &str, now: Timestamp) -> Result<Run> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        // One statement: the run as it was (`r`), whether its job and key already have a
        // pending run (`taken`), the resume itself (`u`, only of a failed run whose key is
        // free), its closed waits reopened (`w`) and a wake-up for idle workers (`note`).
        let sql = format!(
            "WITH r AS (SELECT id, status, job_name, concurrency_key FROM durably_runs \
               WHERE id = $1), \
             taken AS (SELECT 1 FROM durably_runs p, r WHERE r.concurrency_key IS NOT NULL \
               AND p.status = 'pending' AND p.job_name = r.job_name \
               AND p.concurrency_key = r.concurrency_key AND p.id <> r.id LIMIT 1), \
             u AS (UPDATE durably_runs SET status = 'pending', error = NULL, \
               completed_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = $2 WHERE id = $1 AND status = 'failed' \
               AND NOT EXISTS (SELECT 1 FROM taken) RETURNING {RUN_COLUMNS}), \
             w AS (UPDATE durably_waits SET status = 'pending', resolved_at = NULL \
               WHERE run_id IN (SELECT id FROM u) AND status = 'closed'), \
             note AS (SELECT pg_notify($3::text, '{NOTICE_RUNS}') FROM u) \
             SELECT r.status, r.job_name, r.concurrency_key, \
               EXISTS (SELECT 1 FROM taken), (SELECT count(*) FROM note), {u} \
             FROM r LEFT JOIN u ON true",
            u = run_columns("u"),
        );
        let params: [&(dyn ToSql + Sync); 3] = [&id, &now_text, &channel];
        type Outcome = (String, String, Option<String>, bool, Option<Run>);
        let rows = self
            .read(
                "resume_run",
                &sql,
                &params,
                |row| -> std::result::Result<Outcome, Fail> {
                    let resumed = match row.try_get::<_, Option<String>>(5)? {
                        Some(_) => Some(run_from_row(row, 5)?),
                        None => None,
                    };
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                        resumed,
                    ))
                },
            )
            .await?;
        let Some((status, job_name, key, taken, resumed)) = rows.into_iter().next() else {
            return Err(resume_not_found(id));
        };
        if let Some(run) = resumed {
            return Ok(run);
        }
        let status: RunStatus = status
            .parse()
            .map_err(|_| Error::storage("resume_run", format!("invalid run status {status:?}")))?;
        match (status, key) {
            (RunStatus::Failed, Some(key)) if taken => Err(resume_key_taken(id, &job_name, &key)),
            (RunStatus::Failed, _) => Err(Error::Conflict(format!(
                "Run \"{id}\" changed while it was being resumed; read it again and retry"
            ))),
            (status, _) => Err(resume_not_failed(id, status)),
        }
    }

    /// [`Store::delete_run`]: a terminal run and its records.
    pub(super) async fn delete_terminal(&self, id: &str) -> Result<bool> {
        let sql = format!(
            "WITH r AS (DELETE FROM durably_runs WHERE id = $1 AND status IN {TERMINAL} RETURNING id), \
             a AS (DELETE FROM durably_step_attempts WHERE run_id IN (SELECT id FROM r)), \
             w AS (DELETE FROM durably_waits WHERE run_id IN (SELECT id FROM r)), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("delete_run", true, |client, _| {
                let sql = &sql;
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[&id]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted == 1)
    }

    /// [`Store::purge_runs`]: the oldest terminal runs and their records.
    pub(super) async fn purge_terminal(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        let cutoff = older_than.to_string();
        let limit = limit.min(i64::MAX as u64) as i64;
        let sql = format!(
            "WITH ids AS (SELECT id FROM durably_runs WHERE status IN {TERMINAL} \
               AND completed_at IS NOT NULL AND completed_at < $1 \
               ORDER BY completed_at ASC, id ASC LIMIT $2::bigint FOR UPDATE SKIP LOCKED), \
             r AS (DELETE FROM durably_runs WHERE id IN (SELECT id FROM ids) RETURNING id), \
             a AS (DELETE FROM durably_step_attempts WHERE run_id IN (SELECT id FROM r)), \
             w AS (DELETE FROM durably_waits WHERE run_id IN (SELECT id FROM r)), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("purge_runs", true, |client, _| {
                let (sql, cutoff) = (&sql, &cutoff);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[cutoff, &limit]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted.max(0) as u64)
    }
}

#[async_trait]
impl RunAdmin for PostgresStore {
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let mut sets = vec!["updated_at = $1".to_string()];
        let mut values: Vec<Option<String>> = vec![Some(now.to_string())];
        let mut set = |column: &str, value: Option<String>| {
            values.push(value);
            sets.push(format!("{column} = ${}", values.len()));
        };
        if let Some(status) = patch.status {
            set("status", Some(status.as_str().to_owned()));
        }
        if let Some(owner) = &patch.lease_owner {
            set("lease_owner", owner.clone());
        }
        if let Some(expires) = patch.lease_expires_at {
            set("lease_expires_at", expires.map(|t| t.to_string()));
        }
        if let Some(progress) = &patch.progress {
            let text = progress
                .as_ref()
                .map(|p| to_json("update_run", p))
                .transpose()?;
            set("progress", text);
        }
        if let Some(error) = &patch.error {
            set("error", error.clone());
        }
        if let Some(completed_at) = patch.completed_at {
            set("completed_at", completed_at.map(|t| t.to_string()));
        }
        if let Some(input) = &patch.input {
            set("input", Some(to_json("update_run", input)?));
        }
        values.push(Some(id.to_owned()));
        let sql = format!(
            "UPDATE durably_runs SET {} WHERE id = ${}",
            sets.join(", "),
            values.len()
        );
        let changed = self
            .run("update_run", true, |client, _| {
                let (sql, values) = (&sql, &values);
                async move {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    Ok(client.execute(sql.as_str(), &params).await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }
}

impl PostgresStore {
    /// Completes or fails a run (fenced), dropping its steps if asked, and wakes workers when
    /// the run held a concurrency key another pending run waits for. A retry whose first
    /// attempt committed recognises the run in the state it wrote (same generation).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish(
        &self,
        operation: &'static str,
        fence: &Fence,
        set: &str,
        status: &'static str,
        value: Option<String>,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let close_waits = match fence.may_have_waits {
            true => {
                "cw AS (UPDATE durably_waits SET status = 'closed', resolved_at = $4 \
                   WHERE run_id IN (SELECT id FROM u) AND status = 'pending'), "
            }
            false => "",
        };
        let sql = format!(
            "WITH u AS (UPDATE durably_runs SET {set}, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $4, updated_at = $4 \
               WHERE {FENCED} RETURNING id, job_name, concurrency_key), \
             d AS (DELETE FROM durably_steps WHERE $5::boolean AND run_id IN (SELECT id FROM u)), \
             {close_waits}\
             note AS (SELECT pg_notify($6::text, '{NOTICE_RUNS}') FROM u \
               WHERE u.concurrency_key IS NOT NULL AND EXISTS (SELECT 1 FROM durably_runs p \
               WHERE p.status = 'pending' AND p.concurrency_key = u.concurrency_key)), \
             again AS (SELECT 1 FROM durably_runs WHERE $7::boolean AND id = $1 \
               AND status = '{status}' AND lease_generation = $2::bigint) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note), \
               (SELECT count(*) FROM again)"
        );
        let (changed, again) = self
            .run(operation, true, |client, attempt| {
                let (sql, now_text, channel, value) = (&sql, &now_text, &channel, &value);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let retrying = attempt > 0;
                    let row = client
                        .query_one(
                            &statement,
                            &[
                                &fence.run_id,
                                &fence.generation,
                                value,
                                now_text,
                                &drop_steps,
                                channel,
                                &retrying,
                            ],
                        )
                        .await?;
                    Ok((count(&row, 0)?, count(&row, 2)?))
                }
            })
            .await?;
        Ok(changed == 1 || again == 1)
    }
}
