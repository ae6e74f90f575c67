//! Lease renewals of many runs in one statement (issue 27): the runs a worker holds (a local
//! queue keeps hundreds, see `Tuning::local_queue`) each renew their lease on their own
//! schedule; the renewals that arrive while one statement executes go out together in the next
//! one, over arrays (`unnest`), each fenced as a single renewal is.
//!
//! Only with group commit on (the default): with it off every renewal is its own statement, as
//! every write then is.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::Fail;
use super::batch::{Counters, FaultReporter};
use crate::error::{Error, Result};

/// Most renewals in one statement.
const MAX_RENEWALS: usize = 1024;

/// Extends each lease still held (the fence) and unexpired at the renewal's `now`, to its
/// `expires`. One row per renewal, in order: whether its lease was extended.
const RENEW_SQL: &str = "WITH req AS (SELECT * FROM unnest($1::text[], $2::bigint[], \
    $3::text[], $4::text[]) WITH ORDINALITY AS t(run_id, gen, expires, now, ord)), \
  u AS (UPDATE durably_runs r SET lease_expires_at = req.expires, updated_at = req.now \
    FROM req WHERE r.id = req.run_id AND (r.status = 'leased') IS TRUE \
      AND r.lease_generation = req.gen AND r.lease_expires_at > req.now RETURNING r.id) \
  SELECT (req.run_id IN (SELECT id FROM u)) IS TRUE FROM req ORDER BY req.ord";

/// A lease to extend.
pub(super) struct Renewal {
    pub run_id: String,
    pub generation: i64,
    pub expires: String,
    pub now: String,
    /// Whether the lease was extended (`false`: lost or expired).
    pub reply: oneshot::Sender<Result<bool>>,
}

/// Starts the renewing task; it ends when every sender is dropped.
pub(super) fn spawn(
    pool: Pool,
    retry_for: Duration,
    report: FaultReporter,
    counters: Arc<Counters>,
) -> Option<mpsc::UnboundedSender<Renewal>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let (sender, receiver) = mpsc::unbounded_channel();
    handle.spawn(renew_loop(pool, retry_for, report, counters, receiver));
    Some(sender)
}

async fn renew_loop(
    pool: Pool,
    retry_for: Duration,
    report: FaultReporter,
    counters: Arc<Counters>,
    mut receiver: mpsc::UnboundedReceiver<Renewal>,
) {
    while let Some(first) = receiver.recv().await {
        let mut renewals = vec![first];
        while renewals.len() < MAX_RENEWALS {
            match receiver.try_recv() {
                Ok(renewal) => renewals.push(renewal),
                Err(_) => break,
            }
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            counters.renewal_statements.fetch_add(1, Relaxed);
            counters.renewals.fetch_add(renewals.len() as u64, Relaxed);
        }
        renew(&pool, retry_for, &report, renewals).await;
    }
}

/// One statement for `renewals`, retried on transient faults until `retry_for` (extending a
/// lease again to the same expiry is harmless); every renewal gets its answer.
async fn renew(pool: &Pool, retry_for: Duration, report: &FaultReporter, renewals: Vec<Renewal>) {
    let mut columns: (Vec<&str>, Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
    for renewal in &renewals {
        columns.0.push(&renewal.run_id);
        columns.1.push(renewal.generation);
        columns.2.push(&renewal.expires);
        columns.3.push(&renewal.now);
    }
    let params: [&(dyn ToSql + Sync); 4] = [&columns.0, &columns.1, &columns.2, &columns.3];
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut tries: u32 = 0;
    let outcome = loop {
        let attempt = async {
            let client = pool.get().await.map_err(Fail::Pool)?;
            let statement = client.prepare_cached(RENEW_SQL).await?;
            let rows = client.query(&statement, &params).await?;
            rows.iter()
                .map(|row| row.try_get::<_, bool>(0).map_err(Fail::from))
                .collect::<std::result::Result<Vec<bool>, Fail>>()
        };
        match attempt.await {
            Ok(extended) if extended.len() == renewals.len() => break Ok(extended),
            Ok(extended) => {
                break Err(format!(
                    "the renewal statement answered {} rows for {} renewals",
                    extended.len(),
                    renewals.len()
                ));
            }
            Err(fail) => {
                let wait = Duration::from_millis(50u64 << tries.min(4));
                if !fail.is_transient() || tokio::time::Instant::now() + wait > deadline {
                    break Err(fail.describe());
                }
                let error = fail.describe();
                tracing::debug!(%error, "PostgreSQL lease renewal failed; retrying");
                if tries == 0 {
                    report("renew_lease", error);
                }
                tries += 1;
                tokio::time::sleep(wait).await;
            }
        }
    };
    match outcome {
        Ok(extended) => {
            for (renewal, extended) in renewals.into_iter().zip(extended) {
                let _ = renewal.reply.send(Ok(extended));
            }
        }
        Err(message) => {
            for renewal in renewals {
                let _ = renewal
                    .reply
                    .send(Err(Error::storage("renew_lease", message.clone())));
            }
        }
    }
}
