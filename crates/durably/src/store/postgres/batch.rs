//! Group commit for the hot lease-holder writes (step persistence and run completion).
//!
//! Concurrent `persist_step` and `complete_run` calls queue here; one task takes everything
//! queued, turns each kind into **one** statement over arrays (`unnest`), and runs the
//! statements pipelined on one connection: many executions share one round trip and one commit.
//! Each row keeps the semantics of the single write: fenced on
//! `status = 'leased' AND lease_generation = <fence>` (the run row locked `FOR NO KEY UPDATE`),
//! a retry after a lost connection recognises its own earlier commit.
//!
//! The statements of one batch share **one** transaction (`BEGIN` and `COMMIT` pipelined with
//! them), so a batch costs one WAL flush. Completions that hand their worker slot on
//! ([`Store::finish_run`](crate::store::Store::finish_run) with a claim) add one claim of
//! keyless runs to that transaction; a run whose concurrency key needs the advisory-lock path
//! is left to the worker loop, whose slot frees when the hand-off claims nothing.
//!
//! One batch executes at a time. The next one waits briefly for the runs the last one served
//! ([`crate::PostgresOptions::commit_delay`]), so runs stepping at once share every batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;

use super::batch_sql::*;
use super::{Fail, count, count_bool, run_column_count, run_from_row};
use crate::error::{Error, Result};
use crate::run::Run;
use crate::store::ClaimRequest;
use crate::time::Timestamp;

/// Most writes of one kind in one statement.
const MAX_BATCH: usize = 512;
/// Batches executing at once (each on its own connection, so on its own server process).
/// Usually one: writes that arrive while a batch executes share the next one, and the runs it
/// served rejoin them (see [`gather_returning_runs`]); with two in flight at any size, runs
/// split between the two batches and stayed split (measured: steps-10 at concurrency 8, 660
/// jobs/s with two against 835-880 with one and the gather). A second batch starts beside the
/// first only when the writes waiting fill one of [`PARALLEL_FROM`] on their own: then one
/// server process executing one batch at a time is the limit, and a second one uses another
/// core (see `docs/performance.md`).
pub(super) const MAX_IN_FLIGHT: usize = 2;

/// The fewest writes waiting that start a batch while another one executes.
const PARALLEL_FROM: usize = 64;

/// A step row to insert under a fence.
pub(super) struct PersistRequest {
    pub run_id: String,
    pub generation: i64,
    pub step_id: String,
    pub name: String,
    pub index: i32,
    pub status: &'static str,
    pub output: Option<String>,
    pub error: Option<String>,
    pub started_at: String,
    pub completed_at: String,
    /// The step attempt the write records: its id, whether its `started` row exists, its
    /// metadata (JSON).
    pub attempt: Option<(String, bool, Option<String>)>,
    /// `(fenced, inserted, already inserted by an earlier attempt)`.
    pub reply: oneshot::Sender<Result<(bool, bool, bool)>>,
}

/// A run to complete under a fence.
pub(super) struct CompleteRequest {
    pub run_id: String,
    pub generation: i64,
    pub output: Option<String>,
    pub now: String,
    pub drop_steps: bool,
    /// Whether the run holds a concurrency key ([`Fence::concurrency_key`]): only then can its
    /// completion free a key for a waiting run.
    pub frees_key: bool,
    /// Whether the run may have pending durable waits to close ([`Fence::may_have_waits`]).
    pub close_waits: bool,
    /// Runs to claim in the same transaction, with the claim's `now`.
    pub claim: Option<(ClaimRequest, Timestamp)>,
    /// `(completed, runs claimed, claimable runs left unclaimed)`: the last is set when a claim
    /// was asked for but could not look at everything (a keyed run, a retry, another worker's
    /// claim), so the worker must look again itself.
    pub reply: oneshot::Sender<Result<(bool, Vec<Run>, bool)>>,
}

pub(super) enum Request {
    Persist(PersistRequest),
    Complete(CompleteRequest),
}

impl Request {
    fn run_id(&self) -> &str {
        match self {
            Request::Persist(r) => &r.run_id,
            Request::Complete(r) => &r.run_id,
        }
    }
}

/// Batches executed and writes they carried, for [`crate::WriterStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub batches: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    /// Lease renewal statements and the renewals they carried (`renewals.rs`).
    pub renewal_statements: std::sync::atomic::AtomicU64,
    pub renewals: std::sync::atomic::AtomicU64,
}

/// Runs whose step a finished batch persisted and which have not written since: each usually
/// sends its next write (a step or its completion) a moment after its reply.
type Returning = Arc<std::sync::Mutex<HashSet<String>>>;

fn returning_runs(returning: &Returning) -> std::sync::MutexGuard<'_, HashSet<String>> {
    returning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reports a fault that is being retried (operation, error).
pub(super) type FaultReporter = Arc<dyn Fn(&'static str, String) + Send + Sync>;

/// Starts the batching task; it ends when every sender is dropped.
pub(super) fn spawn(
    pool: Pool,
    channel: String,
    retry_for: Duration,
    report: FaultReporter,
    settings: BatchSettings,
) -> Option<mpsc::UnboundedSender<Request>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let (sender, receiver) = mpsc::unbounded_channel();
    handle.spawn(batch_loop(
        pool, channel, retry_for, report, settings, receiver,
    ));
    Some(sender)
}

/// How the batching task groups writes.
pub(super) struct BatchSettings {
    /// See [`crate::PostgresOptions::commit_delay`].
    pub commit_delay: Duration,
    pub counters: Arc<Counters>,
}

async fn batch_loop(
    pool: Pool,
    channel: String,
    retry_for: Duration,
    report: FaultReporter,
    settings: BatchSettings,
    mut receiver: mpsc::UnboundedReceiver<Request>,
) {
    // How many batches execute now.
    let (executing, mut ended) = watch::channel(0usize);
    let executing = Arc::new(executing);
    let channel = Arc::new(channel);
    let returning = Returning::default();
    while let Some(first) = receiver.recv().await {
        let mut persists = Vec::new();
        let mut completes = Vec::new();
        let full = |persists: &Vec<PersistRequest>, completes: &Vec<CompleteRequest>| {
            persists.len() >= MAX_BATCH || completes.len() >= MAX_BATCH
        };
        let mut next = Some(first);
        while let Some(request) = next.take() {
            push(request, &mut persists, &mut completes);
            if full(&persists, &completes) {
                break;
            }
            next = receiver.try_recv().ok();
        }
        // Wait for a batch to end unless none executes, or this one is big enough to execute
        // beside it; writes arriving meanwhile join this batch.
        let alone = loop {
            let now_executing = *ended.borrow_and_update();
            let waiting = persists.len() + completes.len();
            if now_executing == 0 {
                break true;
            }
            if now_executing < MAX_IN_FLIGHT && waiting >= PARALLEL_FROM {
                break false;
            }
            tokio::select! {
                biased;
                changed = ended.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(request) = receiver.recv(), if !full(&persists, &completes) => {
                    push(request, &mut persists, &mut completes);
                }
            }
        };
        if alone && !settings.commit_delay.is_zero() {
            let (batch, delay) = ((&mut persists, &mut completes), settings.commit_delay);
            gather_returning_runs(&mut receiver, &returning, batch, delay).await;
        }
        let (pool, channel, report) = (pool.clone(), channel.clone(), report.clone());
        let (returning, counters) = (returning.clone(), settings.counters.clone());
        let done = Executing::start(&executing);
        tokio::spawn(async move {
            let batch = Batch {
                persists,
                completes,
                returning: Some(&returning),
                counters: &counters,
            };
            execute(&pool, &channel, retry_for, &report, batch).await;
            drop(done);
        });
    }
}

/// Counts one batch as executing until dropped (also when its task ends by a panic).
struct Executing(Arc<watch::Sender<usize>>);

impl Executing {
    fn start(executing: &Arc<watch::Sender<usize>>) -> Self {
        executing.send_modify(|n| *n += 1);
        Executing(executing.clone())
    }
}

impl Drop for Executing {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn push(
    request: Request,
    persists: &mut Vec<PersistRequest>,
    completes: &mut Vec<CompleteRequest>,
) {
    match request {
        Request::Persist(r) => persists.push(r),
        Request::Complete(r) => completes.push(r),
    }
}

/// Holds a batch back (for up to `delay`, yielding to the runtime between looks) until every
/// run whose step an earlier batch persisted has sent its next write. Runs stepping at once
/// otherwise split into batches that alternate, each paying a round trip, a commit and the
/// statements' fixed cost for a fraction of the runs. A lone run never waits for itself; a
/// run that goes quiet (a long step) costs one wait, once.
async fn gather_returning_runs(
    receiver: &mut mpsc::UnboundedReceiver<Request>,
    returning: &Returning,
    (persists, completes): (&mut Vec<PersistRequest>, &mut Vec<CompleteRequest>),
    delay: Duration,
) {
    let mut missing = {
        let mut expected = returning_runs(returning);
        for id in persists.iter().map(|r| &r.run_id) {
            expected.remove(id);
        }
        for id in completes.iter().map(|r| &r.run_id) {
            expected.remove(id);
        }
        expected.len()
    };
    if missing == 0 {
        return;
    }
    let until = Instant::now() + delay;
    while missing > 0 && persists.len() < MAX_BATCH && completes.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(request) => {
                if returning_runs(returning).remove(request.run_id()) {
                    missing -= 1;
                }
                match request {
                    Request::Persist(r) => persists.push(r),
                    Request::Complete(r) => completes.push(r),
                }
            }
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => {
                tokio::task::yield_now().await
            }
            Err(_) => break,
        }
    }
    if missing > 0 {
        returning_runs(returning).clear();
    }
}

/// The writes of one batch.
struct Batch<'a> {
    persists: Vec<PersistRequest>,
    completes: Vec<CompleteRequest>,
    /// Where to note the runs whose steps this batch persists (`None`: group commit is off).
    returning: Option<&'a Returning>,
    counters: &'a Counters,
}

/// Runs one write on its own (group commit off).
pub(super) async fn execute_one(
    pool: &Pool,
    channel: &str,
    retry_for: Duration,
    report: &FaultReporter,
    request: Request,
    counters: &Counters,
) {
    let (persists, completes) = match request {
        Request::Persist(r) => (vec![r], Vec::new()),
        Request::Complete(r) => (Vec::new(), vec![r]),
    };
    let batch = Batch {
        persists,
        completes,
        returning: None,
        counters,
    };
    execute(pool, channel, retry_for, report, batch).await
}

async fn execute(
    pool: &Pool,
    channel: &str,
    retry_for: Duration,
    report: &FaultReporter,
    batch: Batch<'_>,
) {
    let Batch {
        persists,
        completes,
        returning,
        counters,
    } = batch;
    {
        use std::sync::atomic::Ordering::Relaxed;
        counters.batches.fetch_add(1, Relaxed);
        let writes = (persists.len() + completes.len()) as u64;
        counters.writes.fetch_add(writes, Relaxed);
    }
    let deadline = tokio::time::Instant::now() + retry_for;
    // One claim serves the completions of the first claiming worker (one per process in
    // practice); others claim nothing here.
    let claimer = completes
        .iter()
        .find_map(|r| r.claim.as_ref())
        .map(|(next, now)| (next.worker_id.clone(), next.lease, *now));
    let claims_of = |request: &CompleteRequest| -> usize {
        match (&request.claim, &claimer) {
            (Some((next, _)), Some((worker, lease, _)))
                if next.worker_id == *worker && next.lease == *lease =>
            {
                next.max
            }
            _ => 0,
        }
    };
    let wanted: usize = completes.iter().map(claims_of).sum();
    // Completions that free a concurrency key also claim keyed runs, through the keys' locks,
    // in the same transaction: the run waiting for a freed key is leased with the completion.
    let frees_key = completes
        .iter()
        .any(|request| claims_of(request) > 0 && request.frees_key);
    // Every completion claims and its run holds no key: none can free one.
    let keyless = completes
        .iter()
        .all(|request| request.claim.is_some() && !request.frees_key);
    // The statement reads or writes the waits table only when a completion may close waits
    // or a claim resumes waiting runs.
    let close_waits = completes.iter().any(|request| request.close_waits);
    let resume = completes.iter().any(|request| {
        claims_of(request) > 0 && request.claim.as_ref().is_some_and(|c| c.0.resume_waiting)
    });
    let mut tries: u32 = 0;
    let outcome = loop {
        // Never claims on a retry: the first attempt's claim may have committed unacknowledged
        // (its runs come back when their leases expire).
        let claim = match &claimer {
            Some((worker, lease, now)) if wanted > 0 && tries == 0 => Some((
                now.to_string(),
                wanted.min(i64::MAX as usize) as i64,
                worker.clone(),
                (*now + *lease).to_string(),
            )),
            _ => None,
        };
        let attempt = async {
            let client = pool.get().await.map_err(Fail::Pool)?;
            let persist_statement = if persists.is_empty() {
                None
            } else {
                Some(client.prepare_cached(PERSIST_SQL).await?)
            };
            // With a claim: the statement for what the completions' keys need (see [`Note`]).
            let note = match claim.is_some() {
                false => None,
                true if frees_key => Some(Note::Later),
                true if keyless => Some(Note::Never),
                true => Some(Note::Now),
            };
            let complete_statement = match completes.is_empty() {
                true => None,
                false => Some(
                    client
                        .prepare_cached(complete_statement_sql(note, close_waits, resume))
                        .await?,
                ),
            };
            let keyed_statements = match note == Some(Note::Later) {
                true => Some((
                    client.prepare_cached(&LOCK_CLAIM_KEYS_SQL).await?,
                    client
                        .prepare_cached(claim_keyed_statement_sql(resume))
                        .await?,
                    client.prepare_cached(&NOTE_FREED_KEYS_SQL).await?,
                )),
                false => None,
            };
            let persist_columns = persist_columns(&persists);
            let complete_columns = complete_columns(&completes);
            let retrying = tries > 0;
            let persist_params: Vec<&(dyn ToSql + Sync)> = persist_columns.params();
            let mut complete_params: Vec<&(dyn ToSql + Sync)> = complete_columns.params();
            let channel = channel.to_owned();
            if note != Some(Note::Never) {
                complete_params.push(&channel);
            }
            if note.is_none() {
                complete_params.push(&retrying);
            }
            let mut keyed_params: Vec<&(dyn ToSql + Sync)> = Vec::new();
            let mut note_params: Vec<&(dyn ToSql + Sync)> = vec![&channel];
            if let Some((now, limit, worker, expires)) = &claim {
                complete_params.extend([now as &(dyn ToSql + Sync), limit, worker, expires]);
                keyed_params.extend([worker as &(dyn ToSql + Sync), expires, now]);
                note_params.push(now);
            }
            let from_setting: Option<&str> = None;
            let persisted = async {
                match &persist_statement {
                    Some(statement) => client.query(statement, &persist_params).await.map(Some),
                    None => Ok(None),
                }
            };
            let completed = async {
                match &complete_statement {
                    Some(statement) => client.query(statement, &complete_params).await.map(Some),
                    None => Ok(None),
                }
            };
            let keyed = async {
                match &keyed_statements {
                    Some((lock, keyed, note)) => {
                        let lock_params: [&(dyn ToSql + Sync); 1] = [&from_setting];
                        let (locked, leased, noted) = futures::join!(
                            client.query(lock, &lock_params),
                            client.query(keyed, &keyed_params),
                            client.query_one(note, &note_params)
                        );
                        locked?;
                        let (leased, noted) = (leased?, noted?);
                        Ok(Some((leased, count(&noted, 0)? > 0)))
                    }
                    None => Ok::<_, Fail>(None),
                }
            };
            // Pipelined: every statement goes out at once, in this order, in one transaction.
            // After a failed statement the rest fail too and `COMMIT` rolls back. A lone
            // statement is its own transaction: no `BEGIN` and `COMMIT` to parse and answer.
            let block = (persist_statement.is_some() && complete_statement.is_some())
                || keyed_statements.is_some();
            let (began, persisted, completed, keyed, committed) = futures::join!(
                in_block(&client, block, "BEGIN"),
                persisted,
                completed,
                keyed,
                in_block(&client, block, "COMMIT")
            );
            began?;
            let (persisted, completed, keyed) = (persisted?, completed?, keyed?);
            committed?;
            let claimed = claim.is_some().then_some(keyed);
            Ok::<_, Fail>((persisted, completed, claimed))
        };
        match attempt.await {
            Ok(rows) => break Ok(rows),
            Err(fail) => {
                let wait = Duration::from_millis(50u64 << tries.min(4));
                if !fail.is_transient() || tokio::time::Instant::now() + wait > deadline {
                    break Err(fail.describe());
                }
                let error = fail.describe();
                tracing::debug!(%error, "PostgreSQL group write failed; retrying");
                if tries == 0 {
                    let operation = if persists.is_empty() {
                        "complete_run"
                    } else {
                        "persist_step"
                    };
                    report(operation, error);
                }
                tries += 1;
                tokio::time::sleep(wait).await;
            }
        }
    };
    match outcome {
        Ok((persisted, completed, claimed)) => {
            let persisted = persisted.unwrap_or_default();
            let results: Vec<_> = persisted
                .iter()
                .map(|row| -> std::result::Result<_, Fail> {
                    Ok((
                        count_bool(row, 1)?,
                        count_bool(row, 2)?,
                        count_bool(row, 3)?,
                    ))
                })
                .collect();
            // Every run is noted before any reply goes out, so the next batch finds all of
            // them noted, whichever comes back first.
            if let Some(returning) = returning {
                let mut expected = returning_runs(returning);
                for (request, result) in persists.iter().zip(&results) {
                    if let Ok((true, _, _)) = result {
                        expected.insert(request.run_id.clone());
                    }
                }
            }
            for (request, result) in persists.into_iter().zip(results) {
                let _ = request
                    .reply
                    .send(result.map_err(|f| f.into_error("persist_step")));
            }
            let looked = claimed.is_some();
            let Completions {
                completed,
                mut runs,
                keyed_keys,
                noted,
            } = read_completions(completed.unwrap_or_default(), looked);
            let look_again = match claimed.flatten() {
                // The keyed claim ran: only a keyed candidate it could not lease (another
                // claimer holds its key or its row), or a freed key it did not hand on, may
                // have been left behind.
                Some((keyed_rows, noted)) => {
                    let leased = keyed_rows.len();
                    for row in &keyed_rows {
                        match run_from_row(row, 0) {
                            Ok(run) => runs.push(run),
                            // Cannot happen with the schema we migrate; the lease expires.
                            Err(fail) => tracing::error!(
                                error = %fail.describe(),
                                "unreadable claimed run"
                            ),
                        }
                    }
                    runs.sort_by(crate::store::claim_order);
                    leased < keyed_keys || noted
                }
                None => keyed_keys > 0 || noted,
            };
            let mut runs = runs.into_iter();
            for (request, done) in completes.into_iter().zip(completed) {
                let wanted = claims_of(&request);
                let share: Vec<Run> = runs.by_ref().take(wanted).collect();
                let unlooked = request.claim.is_some() && (!looked || wanted == 0 || look_again);
                let result = done
                    .map(|done| (done, share, unlooked))
                    .map_err(|f| f.into_error("complete_run"));
                let _ = request.reply.send(result);
            }
        }
        Err(message) => {
            for request in persists {
                let _ = request
                    .reply
                    .send(Err(Error::storage("persist_step", message.clone())));
            }
            for request in completes {
                let _ = request
                    .reply
                    .send(Err(Error::storage("complete_run", message.clone())));
            }
        }
    }
}

/// What the completion statement returned.
struct Completions {
    /// Per completion, in order: whether its run is completed.
    completed: Vec<std::result::Result<bool, Fail>>,
    /// Keyless runs the claim leased, oldest first.
    runs: Vec<Run>,
    /// The distinct keys of the keyed candidates, which only the keyed claim leases.
    keyed_keys: usize,
    /// A completion freed a key that a pending run waits for (and sent a notice).
    noted: bool,
}

/// Reads the rows of [`complete_sql`] (`claimed` false) or [`complete_and_claim_sql`].
fn read_completions(rows: Vec<tokio_postgres::Row>, claimed: bool) -> Completions {
    let mut read = Completions {
        completed: Vec::new(),
        runs: Vec::new(),
        keyed_keys: 0,
        noted: false,
    };
    let mut keys = HashSet::new();
    if !claimed {
        read.completed = rows.iter().map(|row| count_bool(row, 1)).collect();
        return read;
    }
    let tail = 3 + run_column_count();
    for row in &rows {
        let keyed = match row.try_get::<_, Option<bool>>(0) {
            Ok(keyed) => keyed,
            Err(error) => {
                read.completed.push(Err(error.into()));
                continue;
            }
        };
        match keyed {
            // A completion.
            None => {
                let noted = count(row, tail + 1).map(|sent| sent > 0);
                read.noted |= noted.unwrap_or(true);
                read.completed.push(count_bool(row, tail));
            }
            Some(true) => match row.try_get::<_, String>(2) {
                Ok(key) => {
                    keys.insert(key);
                }
                Err(_) => read.noted = true,
            },
            Some(false) => match run_from_row(row, 3) {
                Ok(run) => read.runs.push(run),
                // Cannot happen with the schema we migrate; the run's lease expires.
                Err(fail) => tracing::error!(error = %fail.describe(), "unreadable claimed run"),
            },
        }
    }
    read.keyed_keys = keys.len();
    read
}

/// Runs `statement` (`BEGIN` or `COMMIT`) when the batch needs a transaction block.
async fn in_block(
    client: &deadpool_postgres::Client,
    block: bool,
    statement: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    if block {
        client.batch_execute(statement).await
    } else {
        Ok(())
    }
}

struct PersistColumns {
    run_id: Vec<String>,
    generation: Vec<i64>,
    step_id: Vec<String>,
    name: Vec<String>,
    index: Vec<i32>,
    status: Vec<&'static str>,
    output: Vec<Option<String>>,
    error: Vec<Option<String>>,
    started_at: Vec<String>,
    completed_at: Vec<String>,
    attempt_id: Vec<Option<String>>,
    attempt_begun: Vec<bool>,
    attempt_metadata: Vec<Option<String>>,
}

impl PersistColumns {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.run_id,
            &self.generation,
            &self.step_id,
            &self.name,
            &self.index,
            &self.status,
            &self.output,
            &self.error,
            &self.started_at,
            &self.completed_at,
            &self.attempt_id,
            &self.attempt_begun,
            &self.attempt_metadata,
        ]
    }
}

fn persist_columns(requests: &[PersistRequest]) -> PersistColumns {
    PersistColumns {
        run_id: requests.iter().map(|r| r.run_id.clone()).collect(),
        generation: requests.iter().map(|r| r.generation).collect(),
        step_id: requests.iter().map(|r| r.step_id.clone()).collect(),
        name: requests.iter().map(|r| r.name.clone()).collect(),
        index: requests.iter().map(|r| r.index).collect(),
        status: requests.iter().map(|r| r.status).collect(),
        output: requests.iter().map(|r| r.output.clone()).collect(),
        error: requests.iter().map(|r| r.error.clone()).collect(),
        started_at: requests.iter().map(|r| r.started_at.clone()).collect(),
        completed_at: requests.iter().map(|r| r.completed_at.clone()).collect(),
        attempt_id: requests
            .iter()
            .map(|r| r.attempt.as_ref().map(|a| a.0.clone()))
            .collect(),
        attempt_begun: requests
            .iter()
            .map(|r| r.attempt.as_ref().is_some_and(|a| a.1))
            .collect(),
        attempt_metadata: requests
            .iter()
            .map(|r| r.attempt.as_ref().and_then(|a| a.2.clone()))
            .collect(),
    }
}

struct CompleteColumns {
    run_id: Vec<String>,
    generation: Vec<i64>,
    output: Vec<Option<String>>,
    at: Vec<String>,
    drop_steps: Vec<bool>,
}

impl CompleteColumns {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.run_id,
            &self.generation,
            &self.output,
            &self.at,
            &self.drop_steps,
        ]
    }
}

fn complete_columns(requests: &[CompleteRequest]) -> CompleteColumns {
    CompleteColumns {
        run_id: requests.iter().map(|r| r.run_id.clone()).collect(),
        generation: requests.iter().map(|r| r.generation).collect(),
        output: requests.iter().map(|r| r.output.clone()).collect(),
        at: requests.iter().map(|r| r.now.clone()).collect(),
        drop_steps: requests.iter().map(|r| r.drop_steps).collect(),
    }
}

#[cfg(all(test, durably_postgres_tests))]
mod tests {
    use std::time::Duration;

    use crate::Timestamp;
    use crate::store::ClaimRequest;
    use crate::store::postgres::batch_sql::{
        NOTE_FREED_KEYS_SQL, Note, PERSIST_SQL, PLANNER_SETTINGS, complete_and_claim_sql,
        complete_sql,
    };
    use crate::store::postgres::test_schema;
    use crate::store::postgres::{claim_keyed_sql, claim_sql, lock_claim_keys_sql};
    use crate::store::{NewRun, Store};

    /// The plan of `statement` (prepared as `name`, run with `arguments`) under the batch
    /// settings, on the table as it is now.
    async fn plan(
        client: &tokio_postgres::Client,
        name: &str,
        sql: &str,
        arguments: &str,
    ) -> String {
        let settings = PLANNER_SETTINGS.replace("SET ", "SET LOCAL ");
        client
            .batch_execute(&format!("BEGIN; {settings}; PREPARE {name} AS {sql}"))
            .await
            .expect("prepare");
        let rows = client
            .query(&format!("EXPLAIN EXECUTE {name}({arguments})"), &[])
            .await
            .expect("explain");
        client.batch_execute("COMMIT").await.expect("commit");
        rows.iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The planner settings hold on the batch connections only; every other statement of the
    /// store keeps the server's settings.
    #[tokio::test]
    async fn only_the_batch_connections_carry_the_planner_settings() {
        let (store, client, schema) = test_schema::fresh().await;
        let batch = store
            .shared
            .batch_pool
            .get()
            .await
            .expect("batch connection");
        let other = store.shared.pool.get().await.expect("connection");
        for setting in PLANNER_SETTINGS.split(';') {
            let setting = setting.trim().trim_start_matches("SET ");
            let (name, value) = setting.split_once(" = ").expect("name = value");
            let shown = |row: tokio_postgres::Row| row.get::<_, String>(0);
            let on_batch = shown(
                batch
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .expect("show"),
            );
            let on_other = shown(
                other
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .expect("show"),
            );
            assert_eq!(on_batch, value, "{name} on the batch connection");
            assert_ne!(on_other, value, "{name} on the other connections");
        }
        test_schema::drop(&client, &schema).await;
    }

    /// On a queue the server has not analysed yet, with a thousand runs leased, the batch
    /// statements still find their rows by key: no sequential or bitmap scan, whose cost grows
    /// with the table (every step and completion would read every leased run); the keyed claim
    /// finds a key's runs by their key.
    #[tokio::test]
    async fn batch_writes_find_their_rows_by_key_on_a_table_never_analysed() {
        let (store, client, schema) = test_schema::fresh().await;
        let now = Timestamp::now();
        let runs = (0..2000)
            .map(|n| NewRun {
                job_name: "job".into(),
                input: serde_json::json!(n),
                idempotency_key: None,
                concurrency_key: None,
                labels: Default::default(),
                coalesce: None,
                ..Default::default()
            })
            .collect();
        store.enqueue_many(runs, now).await.expect("enqueue");
        let leased = store
            .claim(&ClaimRequest::new("w", Duration::from_secs(60), 1000), now)
            .await
            .expect("claim");
        assert_eq!(leased.len(), 1000);

        let id = &leased[0].id;
        let persist = plan(
            &client,
            "persist",
            PERSIST_SQL,
            &format!(
                "'{{{id}}}', '{{1}}', '{{s1}}', '{{s}}', '{{0}}', '{{completed}}', '{{null}}', \
                 '{{null}}', '{{{now}}}', '{{{now}}}', '{{a1}}', '{{true}}', '{{null}}'"
            ),
        )
        .await;
        let complete_arguments =
            format!("'{{{id}}}', '{{1}}', '{{null}}', '{{{now}}}', '{{false}}', 'c', false");
        let complete = plan(
            &client,
            "complete",
            &complete_sql(false),
            &complete_arguments,
        )
        .await;
        let complete_closing = plan(
            &client,
            "complete_closing",
            &complete_sql(true),
            &complete_arguments,
        )
        .await;
        let completions = format!("'{{{id}}}', '{{1}}', '{{null}}', '{{{now}}}', '{{false}}'");
        let claim = format!("'{now}', 1, 'w', '{now}'");
        let mut complete_and_claim = Vec::new();
        for (name, note, arguments) in [
            (
                "complete_and_claim",
                Note::Now,
                format!("{completions}, 'c', {claim}"),
            ),
            ("keyless", Note::Never, format!("{completions}, {claim}")),
            ("keyed", Note::Later, format!("{completions}, 'c', {claim}")),
        ] {
            for waits in [false, true] {
                let sql = complete_and_claim_sql(note, waits, waits);
                let name = format!("{name}{}", if waits { "_with_waits" } else { "" });
                let planned = plan(&client, &name, &sql, &arguments).await;
                complete_and_claim.push((name, planned));
            }
        }
        // The claim alone (pending runs, expired leases, resolved waiting runs).
        let claim_alone = plan(&client, "claim_alone", &claim_sql(true), &claim).await;
        complete_and_claim.push(("claim_alone".to_owned(), claim_alone));
        let lock_keys = plan(&client, "lock_keys", &lock_claim_keys_sql(), "NULL").await;
        let note_freed_keys = plan(
            &client,
            "note_freed_keys",
            &NOTE_FREED_KEYS_SQL,
            &format!("'c', '{now}'"),
        )
        .await;
        let keyed_arguments = format!("'w', '{now}', '{now}'");
        let claim_keyed = plan(
            &client,
            "claim_keyed",
            &claim_keyed_sql(false),
            &keyed_arguments,
        )
        .await;
        let claim_keyed_resuming = plan(
            &client,
            "claim_keyed_resuming",
            &claim_keyed_sql(true),
            &keyed_arguments,
        )
        .await;
        test_schema::drop(&client, &schema).await;
        // Ending a run that never prepared a wait, and handing its slot on without resuming,
        // never touch the waits table (each table and index a statement touches costs it a
        // lock).
        for (name, plan) in [("complete", &complete), ("claim_keyed", &claim_keyed)]
            .into_iter()
            .chain(
                complete_and_claim
                    .iter()
                    .filter(|(name, _)| !name.ends_with("_with_waits") && name != "claim_alone")
                    .map(|(name, plan)| (name.as_str(), plan)),
            )
        {
            assert!(!plan.contains("durably_waits"), "{name}: {plan}");
        }
        assert!(
            complete_closing.contains("durably_waits"),
            "{complete_closing}"
        );
        assert!(
            claim_keyed_resuming.contains("durably_waits"),
            "{claim_keyed_resuming}"
        );
        let by_key = [
            ("persist", &persist),
            ("complete", &complete),
            ("complete_closing", &complete_closing),
        ]
        .into_iter()
        .chain(
            complete_and_claim
                .iter()
                .map(|(name, plan)| (name.as_str(), plan)),
        );
        for (name, plan) in by_key.clone().chain([
            ("lock_keys", &lock_keys),
            ("claim_keyed", &claim_keyed),
            ("claim_keyed_resuming", &claim_keyed_resuming),
            ("note_freed_keys", &note_freed_keys),
        ]) {
            assert!(!plan.contains("Seq Scan"), "{name}: {plan}");
            assert!(!plan.contains("Bitmap"), "{name}: {plan}");
        }
        for (name, plan) in by_key {
            assert!(plan.contains("durably_runs_pkey"), "{name}: {plan}");
        }
        // Resuming waiting runs (schema v3–4) left the pending claim's plan as it was: the
        // first pending runs in claim order through durably's pending-order indexes (runs of
        // priority 0, then the others).
        for (name, plan) in &complete_and_claim {
            for index in [
                "durably_rs_runs_pending_order",
                "durably_rs_runs_pending_priority_order",
            ] {
                assert!(plan.contains(index), "{name}: {index}: {plan}");
            }
            assert!(!plan.contains("Seq Scan"), "{name}: {plan}");
            // Waiting runs to resume are found from the waits resolved and not yet resumed
            // from: never a join over every resolved wait ever kept.
            if name.contains("waits") || name == "claim_alone" {
                assert!(
                    plan.contains("durably_rs_waits_resumable"),
                    "{name}: {plan}"
                );
            }
        }
        // Each freed key looked up by its key: no join of the keys against an index walk.
        assert!(!note_freed_keys.contains("Join"), "{note_freed_keys}");
        assert_eq!(
            note_freed_keys
                .matches("Index Cond: (concurrency_key = t.k)")
                .count()
                + note_freed_keys
                    .matches("AND (concurrency_key = t.k))")
                    .count(),
            2,
            "{note_freed_keys}"
        );
        // A key's oldest pending run through durably's index of pending keyed runs, never a
        // walk over every pending run.
        assert!(
            claim_keyed.contains("durably_rs_runs_pending_key_priority_order"),
            "{claim_keyed}"
        );
    }
}
