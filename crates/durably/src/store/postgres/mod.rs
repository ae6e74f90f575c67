//! PostgreSQL backend (`tokio-postgres`, pooled by `deadpool-postgres`).
//!
//! Many workers on many hosts share one database. Every operation is one statement where the
//! semantics allow it (CTEs with `RETURNING`), run on a pooled connection with cached prepared
//! statements, so most operations cost one round trip and one commit.
//!
//! - **Claim** (`claim`): one statement picks the oldest claimable runs with
//!   `FOR UPDATE SKIP LOCKED` (pending runs and expired leases, skipping keys held by an unexpired
//!   lease) and leases the ones without a concurrency key at once. Runs with a key are then
//!   leased in a short transaction that takes the advisory lock `hashtext(key)` of each key
//!   (upstream §4.1) and re-checks, in a fresh snapshot, that no other run with that key holds
//!   an unexpired lease. It never waits, for a key's lock (`pg_try_advisory_xact_lock`) nor for a
//!   run's row (`SKIP LOCKED`): a key another claimer is claiming is left to it, and no claim can
//!   close a deadlock with another, ours or the TypeScript runtime's (which holds a run's row and
//!   other keys' locks while it waits for a key's lock). Several runs are claimed in one call
//!   when several slots are free.
//! - **Fencing**: every lease-holder write is conditioned on
//!   `status = 'leased' AND lease_generation = <fence>` in the same statement.
//! - **Wake-ups**: enqueue, cancel, lease release and the end of a run holding a concurrency key
//!   send `NOTIFY` on a channel named after the schema; [`Store::notifications`] exposes them
//!   through a dedicated listener connection that reconnects on its own. A cancel notice is not
//!   echoed to the store that wrote it (in-process cancels reach the worker directly; a cancel
//!   written by another store, process or host fires the executing run's token).
//! - **Faults**: writes whose outcome is unknown because the connection dropped (server restart,
//!   terminated backend) are retried for [`PostgresOptions::retry_for`]; each retry is idempotent
//!   (the row ids are fixed before the first attempt and a retry recognises its own earlier
//!   commit), so a completed step is never recorded twice nor run again. Claims are not retried
//!   here: the worker reports the error (`worker:error`) and backs off.

mod batch;
mod batch_sql;
mod claims;
mod delayed;
mod enqueue;
mod faults;
mod lifecycle;
mod listener;
mod migrate;
mod options;
mod overview;
mod pool;
mod renewals;
mod rows;
mod schedules;
mod sql;
mod steps;
mod store;
mod tls;
mod waits;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::{
    AttemptStart, ClaimRequest, Enqueued, Fence, Finished, LEASE_EXPIRED_PENDING_EXISTS, NewLog,
    NewRun, NewStep, RunAdmin, RunPatch, Signalled, Store, StoreNotice, Transition, parse_labels,
    parse_optional_json, pending_conflict, pending_run, resume_key_taken, resume_not_failed,
    resume_not_found, validate_label_key,
};
use crate::attempts::{AttemptStatus, RunFacts, StepAttempt, interruption_reason};
use crate::error::{Error, Result};
use crate::run::{
    Coalesce, Disposition, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step, StepStatus,
};
use crate::store::migrations::{Ladder, POSTGRES_OWN, UPSTREAM};
use crate::time::{Timestamp, new_id_at};

use crate::waits::{DurableWait, NewWait};
use delayed::*;
use enqueue::*;
use faults::*;
use listener::*;
use migrate::*;
pub use options::PostgresOptions;
use pool::*;
use rows::*;
use sql::*;
use tls::*;
use waits::*;

/// The PostgreSQL store. Cheap to clone; all clones share one pool and one listener.
///
/// ```no_run
/// # async fn example() -> durably::Result<()> {
/// use durably::{PostgresStore, Store};
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app")?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    /// Step rows outlive their run (the options' `preserve_steps`; see
    /// [`Store::with_step_policy`] for views with the other policy).
    preserve_steps: bool,
}

struct Shared {
    pool: Pool,
    /// Connections of the lease-holder batches (group commit).
    batch_pool: Pool,
    config: tokio_postgres::Config,
    /// The TLS settings of every connection: both pools' and the listener's.
    tls: MakeRustlsConnect,
    channel: String,
    /// This store's id in cancel notices: a cancel written through this very store is not
    /// echoed back to it (in-process cancels reach the worker directly).
    origin: String,
    schema: Option<String>,
    retry_for: Duration,
    group_commit: bool,
    commit_delay: Duration,
    counters: Arc<batch::Counters>,
    notices: Arc<Mutex<Option<broadcast::Sender<StoreNotice>>>>,
    batcher: Mutex<Option<tokio::sync::mpsc::UnboundedSender<batch::Request>>>,
    /// The lease renewals' task (started on first use; see `renewals.rs`).
    renewer: Mutex<Option<tokio::sync::mpsc::UnboundedSender<renewals::Renewal>>>,
    stop: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.shared.config.get_hosts())
            .field("dbname", &self.shared.config.get_dbname())
            .field("schema", &self.shared.schema)
            .finish()
    }
}

impl PostgresStore {
    /// A store on the database at `url` (`postgres://user:password@host:port/db`, or a
    /// key-value connection string) with default options. Connections open on first use.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// A store on the database at `url` with `options`. Connections open on first use.
    ///
    /// # TLS
    ///
    /// The URL's `sslmode` decides, for every connection of the store (both pools and the
    /// notification listener), with rustls:
    ///
    /// - `disable`: plain connections.
    /// - `prefer` (the default, as in libpq): TLS when the server offers it, plain otherwise.
    ///   As in libpq, the certificate is not verified: whoever can intercept the connection
    ///   could also make it plain, so `prefer` only guards against eavesdropping, and a server
    ///   with a self-signed certificate (the default of Debian's and Ubuntu's packages) keeps
    ///   working.
    /// - `require`: TLS or no connection, and (unlike libpq, which needs `verify-full` for
    ///   that) the certificate is verified: its chain against the system's roots, Mozilla's
    ///   (webpki-roots) and [`PostgresOptions::root_certificates`], and its names against the
    ///   URL's host. [`PostgresOptions::danger_accept_invalid_certificates`] turns the
    ///   verification off.
    ///
    /// A certificate that fails verification, or a server without TLS under `require`, fails
    /// the operation at once (it is not retried as a connection fault).
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let tls = tls_connector(&config, &options)?;
        if let Some(schema) = &options.schema {
            let valid = !schema.is_empty()
                && schema.len() <= 50
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(Error::Config(format!(
                    "invalid PostgreSQL schema name {schema:?}: use 1 to 50 letters, digits or '_'"
                )));
            }
            let mut server_options = config.get_options().unwrap_or_default().to_owned();
            if !server_options.is_empty() {
                server_options.push(' ');
            }
            server_options.push_str(&format!("-c search_path={schema}"));
            config.options(&server_options);
        }
        if !options.synchronous_commit {
            let mut server_options = config.get_options().unwrap_or_default().to_owned();
            if !server_options.is_empty() {
                server_options.push(' ');
            }
            server_options.push_str("-c synchronous_commit=off");
            config.options(&server_options);
        }
        if config.get_application_name().is_none() {
            config.application_name("durably");
        }
        config.connect_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(10));
        let pool = build_pool(
            &config,
            &tls,
            options.max_connections.max(1),
            &options,
            None,
        )?;
        let batch_connections = if options.group_commit {
            batch_sql::CONNECTIONS
        } else {
            options.max_connections.max(1)
        };
        // The lease-holder batches get their own connections, with the planner settings their
        // statements need set once per session (see [`batch_sql::PLANNER_SETTINGS`]).
        let batch_pool = build_pool(
            &config,
            &tls,
            batch_connections,
            &options,
            Some(batch_sql::PLANNER_SETTINGS),
        )?;
        let channel = match &options.schema {
            Some(schema) => format!("durably_{schema}"),
            None => "durably".to_owned(),
        };
        Ok(PostgresStore {
            preserve_steps: options.preserve_steps,
            shared: Arc::new(Shared {
                pool,
                batch_pool,
                config,
                tls,
                channel,
                origin: crate::time::new_id(),
                schema: options.schema,
                retry_for: options.retry_for,
                group_commit: options.group_commit,
                commit_delay: options.commit_delay,
                counters: Arc::default(),
                notices: Arc::new(Mutex::new(None)),
                batcher: Mutex::new(None),
                renewer: Mutex::new(None),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Group-commit counters: the batches of step writes and completions executed (with group
    /// commit off, one per write) and the writes they carried.
    pub fn stats(&self) -> crate::store::WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        crate::store::WriterStats {
            transactions: self.shared.counters.batches.load(Relaxed),
            operations: self.shared.counters.writes.load(Relaxed),
            lease_renewal_statements: self.shared.counters.renewal_statements.load(Relaxed),
            lease_renewals: self.shared.counters.renewals.load(Relaxed),
        }
    }

    /// The schema this store works in, if one was configured.
    pub fn schema(&self) -> Option<&str> {
        self.shared.schema.as_deref()
    }

    /// Drops this store's schema with everything in it (`DROP SCHEMA … CASCADE`); for tools and
    /// benchmarks that work in a throw-away schema. Does nothing without a configured schema.
    pub async fn drop_schema(&self) -> Result<()> {
        let Some(schema) = self.shared.schema.clone() else {
            return Ok(());
        };
        self.run("drop_schema", false, |client, _| {
            let schema = schema.clone();
            async move {
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&schema)))
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// The `LISTEN/NOTIFY` channel of this store's schema.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Runs `sql` (retried on transient faults: a read, or a write whose retry recognises its
    /// own earlier commit) and maps each row it returns.
    ///
    /// Dropping the returned future while the statement runs cancels it on the server (see
    /// [`CancelOnDrop`]).
    async fn read<T>(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: fn(&Row) -> std::result::Result<T, Fail>,
    ) -> Result<Vec<T>> {
        self.run(operation, true, |client, _| async move {
            let client = CancelOnDrop::new(client, &self.shared.tls);
            let statement = client.prepare_cached(sql).await?;
            let rows = client.query(&statement, params).await?;
            client.finished();
            rows.iter().map(map).collect()
        })
        .await
    }

    /// [`PostgresStore::read`] bounded by the server's `statement_timeout` (`SET LOCAL`, in a
    /// read-only transaction pipelined with the statement: one round trip). A statement that
    /// outlives it fails with [`Error::Timeout`].
    async fn read_within<T>(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: fn(&Row) -> std::result::Result<T, Fail>,
        timeout: Duration,
    ) -> Result<Vec<T>> {
        let set_timeout = format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
            timeout.as_millis().clamp(1, i32::MAX as u128)
        );
        let set_timeout = &set_timeout;
        let outcome = self
            .run(operation, true, |client, _| async move {
                let client = CancelOnDrop::new(client, &self.shared.tls);
                let statement = client.prepare_cached(sql).await?;
                let (began, rows, committed) = futures::join!(
                    client.batch_execute(set_timeout),
                    client.query(&statement, params),
                    client.batch_execute("COMMIT"),
                );
                let outcome = match began.and(rows) {
                    Ok(rows) => rows
                        .iter()
                        .map(map)
                        .collect::<std::result::Result<Vec<T>, Fail>>()
                        .map(Ok),
                    Err(error) if is_query_cancelled(&error) => Ok(Err(())),
                    Err(error) => Err(Fail::Db(error)),
                };
                committed?;
                client.finished();
                outcome
            })
            .await?;
        outcome.map_err(|()| super::read_timeout(operation, timeout))
    }

    /// Runs `attempt` on a pooled connection; when the connection fails in a way that leaves the
    /// outcome unknown (connection closed, server shutting down, pool timeout) and `retry` is set,
    /// tries again with a fresh connection for up to [`PostgresOptions::retry_for`]. `attempt`
    /// gets the attempt number (0 first) so it can recognise its own earlier commit.
    async fn run<T, F, Fut>(&self, operation: &'static str, retry: bool, attempt: F) -> Result<T>
    where
        F: Fn(Object, u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let deadline = tokio::time::Instant::now() + self.shared.retry_for;
        let mut tries: u32 = 0;
        loop {
            let outcome = match self.shared.pool.get().await {
                Ok(client) => attempt(client, tries).await,
                Err(error) => Err(Fail::Pool(error)),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(fail) => {
                    let wait = Duration::from_millis(50u64 << tries.min(4));
                    if !retry
                        || !fail.is_transient()
                        || tokio::time::Instant::now() + wait > deadline
                    {
                        return Err(fail.into_error_on(operation, &self.shared.config));
                    }
                    let error = fail.describe();
                    tracing::debug!(operation, %error, "PostgreSQL operation failed; retrying");
                    if tries == 0 {
                        self.report_fault(operation, error);
                    }
                    tries += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Runs a write through the group-commit task (started on first use), or on its own when
    /// group commit is off.
    /// Completes a run through the write batcher, claiming `claim` in the same transaction.
    async fn complete(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        claim: Option<(ClaimRequest, Timestamp)>,
    ) -> Result<(bool, Vec<Run>)> {
        let drop_steps = !self.preserve_steps;
        let output = output
            .as_ref()
            .map(|o| to_json("complete_run", o))
            .transpose()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batch(
            "complete_run",
            batch::Request::Complete(batch::CompleteRequest {
                run_id: fence.run_id.clone(),
                generation: fence.generation,
                output,
                now: now.to_string(),
                drop_steps,
                frees_key: fence.concurrency_key.is_some(),
                close_waits: fence.may_have_waits,
                claim,
                reply,
            }),
        )
        .await?;
        let (completed, claimed, unlooked) = answer
            .await
            .map_err(|_| Error::storage("complete_run", "the PostgreSQL write task stopped"))??;
        if unlooked {
            // The worker takes an empty hand-off as "nothing claimable"; tell it to look.
            self.notice(StoreNotice::RunsAvailable);
        }
        Ok((completed, claimed))
    }

    /// Inserts one prepared run (upstream §5.5), retrying lost races and lost connections; a
    /// retry recognises the row an earlier attempt committed by its id.
    ///
    /// A plain enqueue is one statement. An `active` one (upstream v4 §7.2) is a transaction
    /// that takes the key's advisory lock first, then decides in a statement of its own, so
    /// concurrent `active` enqueues of a key (and claims of it, which skip a locked key)
    /// take turns and each sees what the one before committed.
    async fn enqueue_prepared(&self, run: &NewRun, prepared: &Prepared) -> Result<Enqueued> {
        let channel = &self.shared.channel;
        for round in 0..3 {
            let outcome = self
                .run("enqueue", true, |mut client, _| async move {
                    let statement = client.prepare_cached(&prepared.sql()).await?;
                    let params = prepared.params(channel);
                    let (Some(key), true) = (&prepared.concurrency_key, prepared.active) else {
                        let rows = client.query(&statement, &params).await?;
                        return resolve(run, prepared, &rows);
                    };
                    let lock = client.prepare_cached(ENQUEUE_KEY_LOCK).await?;
                    let tx = client.transaction().await?;
                    // Pipelined: both go out at once and run in order.
                    let key_param: [&(dyn ToSql + Sync); 1] = [key];
                    let (locked, rows) =
                        futures::join!(tx.query(&lock, &key_param), tx.query(&statement, &params));
                    locked?;
                    let rows = rows?;
                    let outcome = resolve(run, prepared, &rows)?;
                    tx.commit().await?;
                    Ok(outcome)
                })
                .await?;
            match outcome {
                Some(result) => return result,
                None if round < 2 => continue,
                None => {}
            }
        }
        Err(conflict_after_retry(run))
    }

    /// One attempt at [`Store::enqueue_and_claim`] in one transaction: the enqueue and the
    /// claim's first statement pipelined between `BEGIN` and `COMMIT`; the claim claims only if
    /// the enqueue inserted its run, so a rejected or lost enqueue claims nothing. Returns the
    /// enqueue's outcome (`None` when it lost a race or the attempt failed), the keyless runs
    /// leased, and whether claimable runs with a concurrency key were left for the keyed claim.
    ///
    /// Never retried: a claim whose commit went unacknowledged leaves its runs leased to
    /// nobody until their leases expire, as with [`Store::claim`].
    async fn enqueue_then_claim_once(
        &self,
        run: &NewRun,
        prepared: &Prepared,
        next: &ClaimRequest,
        now: Timestamp,
    ) -> (Option<Result<Enqueued>>, Vec<Run>, bool) {
        let channel = &self.shared.channel;
        let claim_sql = claim_after_insert_sql(next.resume_waiting);
        let now_text = now.to_string();
        let expires = (now + next.lease).to_string();
        let limit = next.max.min(i64::MAX as usize) as i64;
        let attempt = async {
            let client = self.shared.pool.get().await.map_err(Fail::Pool)?;
            let enqueue = client.prepare_cached(&prepared.sql()).await?;
            let claim = client.prepare_cached(&claim_sql).await?;
            let enqueue_params = prepared.params(channel);
            let claim_params: [&(dyn ToSql + Sync); 5] =
                [&now_text, &limit, &next.worker_id, &expires, &prepared.id];
            // Pipelined: all four go out at once; after a failed statement the rest fail and
            // `COMMIT` rolls back.
            let (began, enqueued, claimed, committed) = futures::join!(
                client.batch_execute("BEGIN"),
                client.query(&enqueue, &enqueue_params),
                client.query(&claim, &claim_params),
                client.batch_execute("COMMIT")
            );
            began?;
            let (enqueued, claimed) = (enqueued?, claimed?);
            committed?;
            let mut runs = Vec::new();
            let mut keyed = false;
            for row in &claimed {
                if row.try_get::<_, bool>(0)? {
                    keyed = true;
                } else {
                    runs.push(run_from_row(row, 3)?);
                }
            }
            Ok::<_, Fail>((resolve(run, prepared, &enqueued)?, runs, keyed))
        };
        match attempt.await {
            Ok((enqueued, runs, keyed)) => (enqueued, runs, keyed),
            Err(fail) => {
                tracing::debug!(error = %fail.describe(), "enqueue with claim failed; enqueuing alone");
                (None, Vec::new(), false)
            }
        }
    }

    /// Inserts runs without idempotency or concurrency keys (nothing to look up, nothing
    /// they can collide with) in one statement over arrays, with their labels and one notice.
    /// A retry after a lost connection skips the rows its earlier attempt committed: the ids
    /// are chosen before the first attempt.
    async fn enqueue_plain(
        &self,
        runs: &[NewRun],
        prepared: &[Prepared],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>> {
        let ids: Vec<&str> = prepared.iter().map(|p| p.id.as_str()).collect();
        let job_names: Vec<&str> = prepared.iter().map(|p| p.job_name.as_str()).collect();
        let inputs: Vec<&str> = prepared.iter().map(|p| p.input.as_str()).collect();
        let labels: Vec<&str> = prepared.iter().map(|p| p.labels.as_str()).collect();
        let priorities: Vec<Option<i32>> = prepared.iter().map(|p| p.priority).collect();
        let parents: Vec<Option<&str>> = prepared
            .iter()
            .map(|p| p.parent_run_id.as_deref())
            .collect();
        let parent_waits: Vec<Option<&str>> = prepared
            .iter()
            .map(|p| p.parent_wait_id.as_deref())
            .collect();
        let trace_contexts: Vec<Option<&str>> = prepared
            .iter()
            .map(|p| p.trace_context.as_deref())
            .collect();
        let mut label_runs = Vec::new();
        let (mut label_keys, mut label_values) = (Vec::new(), Vec::new());
        for p in prepared {
            for (key, value) in p.label_keys.iter().zip(&p.label_values) {
                label_runs.push(p.id.as_str());
                label_keys.push(key.as_str());
                label_values.push(value.as_str());
            }
        }
        let stamp = now.to_string();
        let channel = &self.shared.channel;
        let sql = format!(
            "WITH req AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
               $10::integer[], $11::text[], $12::text[], $13::text[]) WITH ORDINALITY \
               AS t(id, job_name, input, labels, priority, parent, parent_wait, trace, ord)), \
             ins AS (INSERT INTO durably_runs (id, job_name, input, status, labels, \
               current_step_index, completed_step_count, lease_generation, created_at, updated_at, \
               rs_priority, rs_parent_run_id, rs_parent_wait_id, rs_trace_context) \
               SELECT id, job_name, input, 'pending', labels, 0, 0, 0, $5::text, $5::text, priority, \
               parent, parent_wait, trace \
               FROM req ORDER BY ord ON CONFLICT (id) DO NOTHING RETURNING id), \
             lab AS (INSERT INTO durably_run_labels (run_id, key, value) \
               SELECT * FROM unnest($6::text[], $7::text[], $8::text[]) ON CONFLICT DO NOTHING), \
             note AS (SELECT pg_notify($9::text, '{NOTICE_RUNS}') FROM ins LIMIT 1) \
             SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM note)"
        );
        self.run("enqueue_many", true, |client, _| {
            let sql = &sql;
            let params: [&(dyn ToSql + Sync); 13] = [
                &ids,
                &job_names,
                &inputs,
                &labels,
                &stamp,
                &label_runs,
                &label_keys,
                &label_values,
                channel,
                &priorities,
                &parents,
                &parent_waits,
                &trace_contexts,
            ];
            async move {
                let statement = client.prepare_cached(sql).await?;
                client.query(&statement, &params).await?;
                Ok(())
            }
        })
        .await?;
        Ok(runs
            .iter()
            .zip(prepared)
            .map(|(run, p)| Enqueued {
                run: pending_run(p.id.clone(), run, now),
                disposition: Disposition::Created,
            })
            .collect())
    }

    async fn batch(&self, operation: &'static str, request: batch::Request) -> Result<()> {
        let notices = self.shared.notices.clone();
        let report: batch::FaultReporter =
            Arc::new(move |operation, error| report_fault(&notices, operation, error));
        if !self.shared.group_commit {
            batch::execute_one(
                &self.shared.batch_pool,
                &self.shared.channel,
                self.shared.retry_for,
                &report,
                request,
                &self.shared.counters,
            )
            .await;
            return Ok(());
        }
        let mut slot = self
            .shared
            .batcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = batch::spawn(
                self.shared.batch_pool.clone(),
                self.shared.channel.clone(),
                self.shared.retry_for,
                report,
                batch::BatchSettings {
                    commit_delay: self.shared.commit_delay,
                    counters: self.shared.counters.clone(),
                },
            );
        }
        let sender = slot.as_ref().ok_or_else(|| {
            Error::storage(operation, "no tokio runtime for the PostgreSQL store")
        })?;
        sender
            .send(request)
            .map_err(|_| Error::storage(operation, "the PostgreSQL write task has stopped"))
    }

    /// Renews a lease through the renewals' task, together with the renewals sent meanwhile;
    /// `None` when group commit is off (the caller renews on its own).
    async fn renew_together(
        &self,
        fence: &Fence,
        expires: &str,
        now: &str,
    ) -> Option<Result<bool>> {
        if !self.shared.group_commit {
            return None;
        }
        let sender = {
            let mut slot = self
                .shared
                .renewer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                let notices = self.shared.notices.clone();
                let report: batch::FaultReporter =
                    Arc::new(move |operation, error| report_fault(&notices, operation, error));
                *slot = renewals::spawn(
                    self.shared.pool.clone(),
                    self.shared.retry_for,
                    report,
                    self.shared.counters.clone(),
                );
            }
            slot.clone()?
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let renewal = renewals::Renewal {
            run_id: fence.run_id.clone(),
            generation: fence.generation,
            expires: expires.to_owned(),
            now: now.to_owned(),
            reply,
        };
        if sender.send(renewal).is_err() {
            return Some(Err(Error::storage(
                "renew_lease",
                "the PostgreSQL renewal task has stopped",
            )));
        }
        Some(answer.await.unwrap_or_else(|_| {
            Err(Error::storage(
                "renew_lease",
                "the PostgreSQL renewal task stopped",
            ))
        }))
    }

    /// Sends a notice to the workers of this process that listen (if any).
    fn notice(&self, notice: StoreNotice) {
        send_notice(&self.shared.notices, notice);
    }

    /// Tells listening workers (if any) that an operation is being retried after a fault.
    fn report_fault(&self, operation: &'static str, error: String) {
        report_fault(&self.shared.notices, operation, error);
    }

    fn notice_sender(&self) -> Option<broadcast::Sender<StoreNotice>> {
        let mut slot = self
            .shared
            .notices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = slot.as_ref() {
            return Some(sender.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (sender, _) = broadcast::channel(1024);
        handle.spawn(listen_loop(
            self.shared.config.clone(),
            self.shared.tls.clone(),
            self.shared.channel.clone(),
            self.shared.origin.clone(),
            sender.clone(),
            self.shared.stop.clone(),
        ));
        *slot = Some(sender.clone());
        Some(sender)
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn conflict_after_retry_names_the_key_as_upstream_does() {
        let run = |concurrency: Option<&str>, idempotency: Option<&str>| NewRun {
            job_name: "sync".into(),
            input: Value::Null,
            idempotency_key: idempotency.map(str::to_owned),
            concurrency_key: concurrency.map(str::to_owned),
            labels: Default::default(),
            coalesce: None,
            ..Default::default()
        };
        let message = |run| conflict_after_retry(&run).to_string();
        assert!(
            message(run(Some("user-1"), Some("once"))).ends_with(
                "Conflict after retry for concurrency key \"user-1\" in job \"sync\". \
                 Concurrent modification detected."
            ),
            "{}",
            message(run(Some("user-1"), None))
        );
        assert!(
            message(run(None, Some("once")))
                .contains("for idempotency key \"once\" in job \"sync\"")
        );
    }
}

#[cfg(all(test, durably_postgres_tests))]
mod tests {
    use super::*;

    /// A batch of plain runs is one statement; when it runs again after its commit (a retry
    /// whose first answer was lost), it adds nothing and still reports every run.
    #[tokio::test]
    async fn a_plain_batch_retried_after_its_commit_adds_nothing() {
        let (store, client, schema) = test_schema::fresh().await;
        let now = Timestamp::now();
        let runs: Vec<NewRun> = (0..3)
            .map(|n| NewRun {
                job_name: "job".into(),
                input: serde_json::json!({ "n": n }),
                idempotency_key: None,
                concurrency_key: None,
                labels: [("team".to_string(), format!("t{n}"))]
                    .into_iter()
                    .collect(),
                coalesce: None,
                ..Default::default()
            })
            .collect();
        let prepared: Vec<Prepared> = runs
            .iter()
            .map(|run| Prepared::new(run, new_id_at(now), now).expect("prepare"))
            .collect();
        let first = store
            .enqueue_plain(&runs, &prepared, now)
            .await
            .expect("enqueue");
        let again = store
            .enqueue_plain(&runs, &prepared, now)
            .await
            .expect("retry");
        let count = |sql: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(sql, &[]).await.expect("count");
                row.get::<_, i64>(0)
            }
        };
        let stored_runs = count("SELECT count(*) FROM durably_runs").await;
        let stored_labels = count("SELECT count(*) FROM durably_run_labels").await;
        let stored = store.get_run(&first[1].run.id).await.expect("get");
        test_schema::drop(&client, &schema).await;

        assert_eq!((stored_runs, stored_labels), (3, 3));
        assert_eq!(first, again);
        assert!(first.iter().all(|e| e.disposition == Disposition::Created));
        assert_eq!(stored.as_ref(), Some(&first[1].run));
    }

    /// A page of the run list reads a few index entries per status, whatever the size of the
    /// table: no sequential scan, and no plan node handles more rows than the page needs from
    /// one status (a sort of every matching run would read them all).
    #[tokio::test]
    async fn a_page_of_runs_reads_only_the_newest_of_each_status() {
        let (store, client, schema) = test_schema::fresh().await;
        client
            .batch_execute(
                "INSERT INTO durably_runs (id, job_name, input, status, created_at, updated_at) \
                 SELECT 'c' || lpad(g::text, 8, '0'), 'job', '{}', \
                   CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END, \
                   to_char(timestamp '2026-01-01' + g * interval '10 ms', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '2026-01-01T00:00:00.000Z' \
                 FROM generate_series(1, 20000) g; \
                 INSERT INTO durably_runs (id, job_name, input, status, created_at, updated_at) \
                 SELECT 'p' || lpad(g::text, 8, '0'), 'job', '{}', 'pending', \
                   '2026-02-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z' \
                 FROM generate_series(1, 5000) g; \
                 ANALYZE durably_runs",
            )
            .await
            .expect("fill");

        let filters = [
            RunFilter {
                limit: Some(50),
                ..RunFilter::default()
            },
            RunFilter {
                statuses: vec![RunStatus::Pending, RunStatus::Leased],
                limit: Some(20),
                offset: Some(10),
                ..RunFilter::default()
            },
            RunFilter {
                statuses: vec![RunStatus::Completed],
                job_names: vec!["job".into()],
                limit: Some(50),
                ..RunFilter::default()
            },
        ];
        let mut plans = Vec::new();
        for filter in &filters {
            let values = RunsValues::new(filter);
            let (sql, params) = runs_query(filter, &values);
            let rows = client
                .query(
                    &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"),
                    &params,
                )
                .await
                .expect("explain");
            let plan: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            plans.push(plan.join("\n"));
        }
        let newest = store.get_runs(&filters[0]).await.expect("list");
        test_schema::drop(&client, &schema).await;

        assert_eq!(newest.len(), 50);
        assert!(newest.iter().all(|run| run.status == RunStatus::Pending));
        for plan in &plans {
            assert!(!plan.contains("Seq Scan"), "{plan}");
            let most = plan
                .split("actual rows=")
                .skip(1)
                .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            assert!(most <= 200, "a node handled {most} rows:\n{plan}");
        }
    }
}
