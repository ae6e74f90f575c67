//! [`LibsqlStore`]: the [`Store`] on a remote libSQL database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::conn::{Db, parse_first, parse_rows, scalar_bool, stmt};
use super::hrana::{HranaClient, HranaVersion, Statement};
use super::{enqueue, migrate, rows, runs, schedules, steps, waits as wait_ops};
use crate::attempts::StepAttempt;
use crate::error::{Error, Result};
use crate::run::{Log, Progress, Run, RunFilter, Step};
use crate::schedules::{ScheduleFiring, ScheduleRecord};
use crate::store::sqlite_sql as sql;
use crate::store::{
    AttemptStart, ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin,
    RunPatch, Signalled, Store, Transition,
};
use crate::time::Timestamp;
use crate::waits::{self, DurableWait, NewWait};

/// How a [`LibsqlStore`] talks to its database.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LibsqlOptions {
    /// The auth token sent as `Authorization: Bearer` (Turso's database token); `None` sends
    /// none (or the URL's `authToken=`).
    pub auth_token: Option<String>,
    /// Whether step rows outlive their run ([`Store::preserves_steps`]); `false` by default.
    pub preserve_steps: bool,
    /// The deadline of each HTTP request (30 s by default).
    pub timeout: Duration,
}

impl Default for LibsqlOptions {
    fn default() -> Self {
        LibsqlOptions {
            auth_token: None,
            preserve_steps: false,
            timeout: Duration::from_secs(30),
        }
    }
}

impl LibsqlOptions {
    /// Sets the auth token.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }

    /// Sets the step policy.
    pub fn preserve_steps(mut self, preserve: bool) -> Self {
        self.preserve_steps = preserve;
        self
    }

    /// Sets the deadline of each HTTP request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The store on a remote libSQL database (Turso, sqld, `tursodb --sync-server`) reached over
/// Hrana-over-HTTP: the SQLite store's schema and statements, with no local writer thread.
///
/// Every write is one request: a single statement, or one conditional batch run as a
/// transaction whose guard steps refuse it when a lease-holder's fence (or a decision read
/// before it) no longer holds. See docs/libsql.md for what that means on each server.
///
/// ```no_run
/// # async fn demo() -> durably::Result<()> {
/// use durably::store::{LibsqlStore, Store};
/// let store = LibsqlStore::connect("libsql://my-db.turso.io", Some("token".into())).await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LibsqlStore {
    db: Db,
    preserve_steps: bool,
}

impl LibsqlStore {
    /// A store on the database at `url` (`libsql://`, `https://`, `http://`), checked with
    /// one `SELECT 1`: a wrong URL or token fails here, saying which.
    pub async fn connect(url: &str, auth_token: Option<String>) -> Result<Self> {
        let store = LibsqlStore::open(
            url,
            LibsqlOptions {
                auth_token,
                ..LibsqlOptions::default()
            },
        )?;
        store.db.read("connect", Statement::new("SELECT 1")).await?;
        Ok(store)
    }

    /// A store on the database at `url` with `options`, without any request yet (the first
    /// operation finds out whether the URL and the token are right).
    pub fn open(url: &str, options: LibsqlOptions) -> Result<Self> {
        let client = HranaClient::new(url, options.auth_token.as_deref())
            .map_err(|e| Error::Config(e.to_string()))?
            .with_timeout(options.timeout);
        Ok(LibsqlStore {
            db: Db { client },
            preserve_steps: options.preserve_steps,
        })
    }

    /// The database's base URL (never the token).
    pub fn url(&self) -> &str {
        self.db.client.url()
    }

    /// The version of Hrana over HTTP this store speaks with its server: Hrana 3 where the
    /// server offers it (`GET v3` answers 2xx: sqld, Turso), else Hrana 2 (`tursodb`). Found
    /// out by the first request ([`LibsqlStore::connect`]'s), `None` before it.
    pub fn protocol_version(&self) -> Option<HranaVersion> {
        self.db.client.protocol_version()
    }

    /// How many HTTP requests this store (and its clones) has sent so far, the version probe
    /// included: what an operation costs in round trips (docs/libsql.md).
    pub fn requests_sent(&self) -> u64 {
        self.db.client.requests_sent()
    }
}

#[async_trait]
impl Store for LibsqlStore {
    fn backend(&self) -> &'static str {
        "libsql"
    }

    async fn migrate(&self) -> Result<()> {
        migrate::migrate(&self.db).await
    }

    async fn schema_version(&self) -> Result<i64> {
        migrate::current_version(&self.db).await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        let mut enqueued = enqueue::enqueue_all(&self.db, std::slice::from_ref(&run), now).await?;
        enqueued
            .pop()
            .ok_or_else(|| Error::storage("enqueue", "no run enqueued"))
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        enqueue::enqueue_and_claim(&self.db, run, now, next).await
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        enqueue::enqueue_all(&self.db, &runs, now).await
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        runs::get_run(&self.db, "get_run", id).await
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let (text, args) = sql::list_runs(filter)?;
        let statement = Statement::with_args(text, args.into_iter().map(super::conn::Arg::arg));
        let rows = self.db.rows("get_runs", statement).await?;
        parse_rows("get_runs", &rows, rows::run)
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let rows = self
            .db
            .rows("get_steps", stmt!(sql::GET_STEPS, run_id))
            .await?;
        parse_rows("get_steps", &rows, rows::step)
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let rows = self
            .db
            .rows(
                "get_completed_step",
                stmt!(sql::GET_COMPLETED_STEP, run_id, name),
            )
            .await?;
        parse_first("get_completed_step", &rows, rows::step)
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let rows = self
            .db
            .rows("get_logs", stmt!(sql::GET_LOGS, run_id))
            .await?;
        parse_rows("get_logs", &rows, rows::log)
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        runs::claim(&self.db, request, now).await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        runs::renew_lease(&self.db, fence, now, lease).await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        runs::release_lease(&self.db, fence, now).await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        steps::persist_step(&self.db, fence, step, now).await
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        steps::begin_step_attempt(&self.db, fence, &attempt, now).await
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        steps::set_step_attempt_metadata(&self.db, fence, attempt_id, metadata.as_ref(), now).await
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        use crate::overview::{EndedGroup, EndedRun, OVERVIEW_SAMPLE, OverviewRows};
        const OP: &str = "run_overview";
        let since = window.start(now);
        let key_len = window.key_len() as i64;
        let statuses = self.db.rows(OP, stmt!(sql::OVERVIEW_STATUSES)).await?;
        let oldest = self
            .db
            .rows(OP, stmt!(sql::OVERVIEW_OLDEST_PENDING))
            .await?;
        let ended = self
            .db
            .rows(OP, stmt!(sql::OVERVIEW_ENDED, since, key_len))
            .await?;
        let sample = self
            .db
            .rows(
                OP,
                stmt!(sql::OVERVIEW_SAMPLE, since, OVERVIEW_SAMPLE as i64),
            )
            .await?;
        let rows = OverviewRows {
            statuses: parse_rows(OP, &statuses, |row| Ok((row.text(0)?, row.int(1)?)))?,
            oldest_pending: parse_first(OP, &oldest, |row| {
                Ok((row.text(0)?, row.text(1)?, row.ts(2)?))
            })?,
            ended: parse_rows(OP, &ended, |row| {
                Ok(EndedGroup {
                    job_name: row.text(0)?,
                    bucket: row.text(1)?,
                    status: row.text(2)?,
                    count: row.int(3)?,
                })
            })?,
            sample: parse_rows(OP, &sample, |row| {
                Ok(EndedRun {
                    job_name: row.text(0)?,
                    created_at: row.ts(1)?,
                    started_at: row.opt_ts(2)?,
                    completed_at: row.ts(3)?,
                    delay_end: row.opt_ts(4)?,
                })
            })?,
        };
        Ok(rows.assemble(now, window))
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        const OP: &str = "run_counts";
        let statuses = self.db.rows(OP, stmt!(sql::OVERVIEW_STATUSES)).await?;
        let oldest = self
            .db
            .rows(OP, stmt!(sql::OVERVIEW_OLDEST_PENDING))
            .await?;
        let rows = crate::overview::OverviewRows {
            statuses: parse_rows(OP, &statuses, |row| Ok((row.text(0)?, row.int(1)?)))?,
            oldest_pending: parse_first(OP, &oldest, |row| {
                Ok((row.text(0)?, row.text(1)?, row.ts(2)?))
            })?,
            ..Default::default()
        };
        Ok(rows.counts(now))
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        let rows = self
            .db
            .rows("get_step_attempts", stmt!(sql::SELECT_ATTEMPTS, run_id))
            .await?;
        parse_rows("get_step_attempts", &rows, rows::attempt)
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        wait.validate()?;
        wait_ops::prepare_wait(&self.db, fence, &wait, now).await
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        wait_ops::wait_result(&self.db, fence, wait_id, now).await
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled> {
        let _ = now; // the database's clock decides (this process's, as on SQLite)
        waits::validate_signal_id(signal_id)?;
        let payload = waits::canonical_json(&payload);
        let outcome = wait_ops::signal_wait(&self.db, wait_id, &payload, signal_id).await?;
        outcome.ok_or_else(|| Error::WaitExpired {
            wait_id: wait_id.to_owned(),
        })
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        let _ = now; // the database's clock decides
        waits::validate_limit(limit)?;
        wait_ops::expire_due_waits(&self.db, limit).await
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        wait_ops::get_wait(&self.db, "get_wait", wait_id).await
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        wait_ops::get_waits(&self.db, run_id).await
    }

    async fn children_settled(&self, _parent_run_id: &str, parent_wait_id: &str) -> Result<bool> {
        let result = self
            .db
            .read(
                "children_settled",
                stmt!(sql::CHILDREN_SETTLED, parent_wait_id),
            )
            .await?;
        scalar_bool("children_settled", &result)
    }

    async fn settled_children_waits(&self, limit: u64) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .rows(
                "settled_children_waits",
                stmt!(sql::SETTLED_CHILDREN_WAITS, limit),
            )
            .await?;
        parse_rows("settled_children_waits", &rows, |row| row.text(0))
    }

    async fn children_to_cancel(
        &self,
        cancelled_since: Timestamp,
        limit: u64,
    ) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .rows(
                "children_to_cancel",
                stmt!(
                    sql::CHILDREN_TO_CANCEL,
                    limit,
                    crate::children::DETACHED_METADATA_PATTERN,
                    cancelled_since
                ),
            )
            .await?;
        parse_rows("children_to_cancel", &rows, |row| row.text(0))
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        steps::update_progress(&self.db, fence, progress.as_ref(), now).await
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        steps::append_log(&self.db, fence, log, now).await
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let drop_steps = !self.preserve_steps;
        runs::finish_run(&self.db, fence, &transition, now, drop_steps, then_claim).await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        runs::cancel_run(&self.db, id, now, !self.preserve_steps).await
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        runs::resume_run(&self.db, id, now).await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        runs::delete_run(&self.db, id).await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        runs::purge_runs(&self.db, older_than, limit).await
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        runs::release_expired_leases(&self.db, now, !self.preserve_steps).await
    }

    fn preserves_steps(&self) -> bool {
        self.preserve_steps
    }

    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        Some(Arc::new(LibsqlStore {
            db: self.db.clone(),
            preserve_steps,
        }))
    }

    fn admin(&self) -> Option<&dyn RunAdmin> {
        Some(self)
    }

    fn keeps_schedules(&self) -> bool {
        true
    }

    async fn upsert_schedule(
        &self,
        record: ScheduleRecord,
        now: Timestamp,
    ) -> Result<ScheduleRecord> {
        schedules::upsert(&self.db, &record, now).await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        schedules::get(&self.db, name).await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        schedules::list(&self.db).await
    }

    async fn due_schedules(&self, now: Timestamp, limit: u64) -> Result<Vec<ScheduleRecord>> {
        schedules::due(&self.db, now, limit).await
    }

    async fn pause_schedule(&self, name: &str, now: Timestamp) -> Result<Option<ScheduleRecord>> {
        schedules::pause(&self.db, name, now).await
    }

    async fn resume_schedule(
        &self,
        name: &str,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<ScheduleRecord>> {
        schedules::resume(&self.db, name, next_fire_at, now).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        schedules::delete(&self.db, name).await
    }

    async fn fire_schedule(
        &self,
        firing: ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        schedules::fire(&self.db, &firing, now).await
    }
}

#[async_trait]
impl RunAdmin for LibsqlStore {
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        runs::update_run(&self.db, id, &patch, now).await
    }
}
