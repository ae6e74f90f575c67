//! Claims and leases on PostgreSQL: the claim (keyless runs in one statement, keyed runs under
//! their advisory locks), lease renewal and release, and the recovery of expired leases.

use super::*;

impl PostgresStore {
    /// [`Store::claim`]: the keyless runs in one statement, then the runs whose concurrency
    /// key needs its advisory lock, in rounds.
    pub(super) async fn claim_runs(
        &self,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<Run>> {
        let ClaimRequest {
            worker_id,
            lease,
            max,
            resume_waiting,
        } = request;
        let (worker_id, lease, max) = (worker_id.as_str(), *lease, *max);
        let now_text = now.to_string();
        let expires = (now + lease).to_string();
        let first_sql = claim_sql(*resume_waiting);
        let (lock_sql, keyed_sql) = (lock_claim_keys_sql(), claim_keyed_sql(*resume_waiting));
        let mut claimed: Vec<Run> = Vec::new();
        // Claims are not retried on connection failures: a claim whose commit went
        // unacknowledged leaves runs leased to nobody, and they return when the lease expires.
        for _round in 0..4 {
            let wanted = max.saturating_sub(claimed.len());
            if wanted == 0 {
                break;
            }
            let limit = wanted.min(i64::MAX as usize) as i64;
            let (keyless, keys) = self
                .run("claim", false, |client, _| {
                    let (sql, now_text, expires) = (&first_sql, &now_text, &expires);
                    async move {
                        let statement = client.prepare_cached(sql).await?;
                        let rows = client
                            .query(&statement, &[now_text, &limit, &worker_id, expires])
                            .await?;
                        let mut runs = Vec::new();
                        let mut keys: Vec<String> = Vec::new();
                        for row in &rows {
                            if row.try_get::<_, bool>(0)? {
                                let key: String = row.try_get(2)?;
                                if !keys.contains(&key) {
                                    keys.push(key);
                                }
                            } else {
                                runs.push(run_from_row(row, 3)?);
                            }
                        }
                        Ok((runs, keys))
                    }
                })
                .await?;
            claimed.extend(keyless);
            if keys.is_empty() {
                break;
            }
            let room = max.saturating_sub(claimed.len());
            let keys: Vec<String> = keys.into_iter().take(room).collect();
            if keys.is_empty() {
                break;
            }
            let keys_json = serde_json::to_string(&keys)
                .map_err(|error| Error::storage("claim", error.to_string()))?;
            let leased = self
                .run("claim", false, |client, _| {
                    let (lock_sql, keyed_sql) = (&lock_sql, &keyed_sql);
                    let (now_text, expires, keys_json) = (&now_text, &expires, &keys_json);
                    async move {
                        let lock = client.prepare_cached(lock_sql).await?;
                        let keyed = client.prepare_cached(keyed_sql).await?;
                        let keys_json = Some(keys_json.as_str());
                        let lock_params: [&(dyn ToSql + Sync); 1] = [&keys_json];
                        let keyed_params: [&(dyn ToSql + Sync); 3] =
                            [&worker_id, expires, now_text];
                        // Pipelined, one round trip: the locks, then (a statement of its own,
                        // whose snapshot sees every lease committed under them before) the
                        // leases; a failed statement fails the rest and `COMMIT` rolls back.
                        let (began, locked, leased, committed) = futures::join!(
                            client.batch_execute("BEGIN"),
                            client.query(&lock, &lock_params),
                            client.query(&keyed, &keyed_params),
                            client.batch_execute("COMMIT"),
                        );
                        began?;
                        locked?;
                        let leased = leased?;
                        committed?;
                        leased
                            .iter()
                            .map(|row| run_from_row(row, 0))
                            .collect::<std::result::Result<Vec<_>, _>>()
                    }
                })
                .await?;
            let all_keys_leased = leased.len() == keys.len();
            claimed.extend(leased);
            if all_keys_leased {
                break;
            }
            // Some key was taken by another claimer meanwhile: look again with a fresh view.
        }
        claimed.sort_by(crate::store::claim_order);
        Ok(claimed)
    }

    /// [`Store::renew_lease`]: with the other renewals in flight when group commit is on,
    /// else one fenced statement.
    pub(super) async fn renew_held_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let expires = now + lease;
        let (expires_text, now_text) = (expires.to_string(), now.to_string());
        if let Some(extended) = self.renew_together(fence, &expires_text, &now_text).await {
            return Ok(extended?.then_some(expires));
        }
        let sql = format!(
            "UPDATE durably_runs SET lease_expires_at = $3, updated_at = $4 \
             WHERE {FENCED} AND lease_expires_at > $4"
        );
        let changed = self
            .run("renew_lease", true, |client, _| {
                let (sql, expires_text, now_text) = (&sql, &expires_text, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, expires_text, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((changed == 1).then_some(expires))
    }

    /// [`Store::release_lease`]: the run back to pending (fenced), with a wake-up.
    pub(super) async fn release_held_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let sql = format!(
            "WITH u AS (UPDATE durably_runs r SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $3 \
               WHERE r.{FENCED_R} AND (r.concurrency_key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = r.job_name AND p.concurrency_key = r.concurrency_key)) \
               RETURNING r.id), \
             note AS (SELECT pg_notify($4::text, '{NOTICE_RUNS}') FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)"
        );
        let params: [&(dyn ToSql + Sync); 4] =
            [&fence.run_id, &fence.generation, &now_text, &channel];
        let changed = self
            .read("release_lease", &sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    /// [`Store::release_expired_leases`]: expired leases back to pending, or failed when their
    /// job and key already have a pending run.
    pub(super) async fn recover_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        let drop_steps = !self.preserve_steps;
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let returning = RUN_COLUMNS;
        // An expired lease goes back to pending unless its job+key already has a pending run, or
        // an older expired lease of the same job+key goes back instead (the pending-per-key
        // index allows one): those fail.
        let sql = format!(
            "WITH x AS (SELECT id, job_name, concurrency_key, created_at FROM durably_runs \
               WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= $1 \
               AND waiting_on_wait_id IS NULL AND NOT EXISTS (SELECT 1 FROM durably_waits w \
                 WHERE w.run_id = durably_runs.id) \
               FOR UPDATE SKIP LOCKED), \
             blocked AS (SELECT x.id FROM x WHERE x.concurrency_key IS NOT NULL AND ( \
               EXISTS (SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = x.job_name AND p.concurrency_key = x.concurrency_key \
                 AND p.id <> x.id) \
               OR EXISTS (SELECT 1 FROM x y WHERE y.job_name = x.job_name \
                 AND y.concurrency_key = x.concurrency_key \
                 AND (y.created_at, y.id) < (x.created_at, x.id)))), \
             f AS (UPDATE durably_runs SET status = 'failed', error = $2, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $1, updated_at = $1 \
               WHERE id IN (SELECT id FROM blocked) RETURNING {returning}), \
             p AS (UPDATE durably_runs SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $1 \
               WHERE id IN (SELECT id FROM x) AND id NOT IN (SELECT id FROM blocked) \
               RETURNING {returning}), \
             dropped AS (DELETE FROM durably_steps WHERE $4 AND run_id IN (SELECT id FROM f)), \
             note AS (SELECT pg_notify($3::text, '{NOTICE_RUNS}') FROM p LIMIT 1) \
             SELECT {returning} FROM f UNION ALL \
             SELECT {returning} FROM p WHERE (SELECT count(*) FROM note) >= 0"
        );
        self.run("release_expired_leases", true, |client, _| {
            let (sql, now_text, channel) = (&sql, &now_text, &channel);
            async move {
                let statement = client.prepare_cached(sql).await?;
                let rows = client
                    .query(
                        &statement,
                        &[
                            now_text,
                            &LEASE_EXPIRED_PENDING_EXISTS,
                            channel,
                            &drop_steps,
                        ],
                    )
                    .await?;
                rows.iter().map(|row| run_from_row(row, 0)).collect()
            }
        })
        .await
    }
}
