//! The worker loop: when to claim (free slots, a look that may find something, no backoff),
//! what wakes it (a trigger of this process, a store notice, a slot that ended, the poll), and
//! the serverless primitives that claim and execute one run at a time.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::Engine;
use super::backoff::Backoff;
use super::maintenance::Pass;
use super::slots::HandOff;
use crate::error::Result;
use crate::run::Run;
use crate::runtime::{self, Ended, Instant, Slots};
use crate::store::{ClaimRequest, StoreNotice};
use crate::time::{Timestamp, new_id};

/// The most runs one claim of the worker loop takes. A worker with a large local queue
/// (`Tuning::local_queue`) fills it over several claims, one after the other, so that
/// other processes claiming from the same database take their share in between instead of
/// finding the backlog's head taken by one claim of hundreds.
const MAX_CLAIM: usize = 64;

impl Engine {
    pub(super) async fn worker_loop(self: Arc<Self>, worker_id: String, stop: CancellationToken) {
        let settings = &self.settings;
        let wake = self.wake.clone();
        let mut in_flight: Slots<bool> = Slots::new();
        // Wake-ups from other processes (PostgreSQL LISTEN/NOTIFY); `None` for backends that
        // only poll.
        let mut notices = self.store.notifications();
        // Triggers of this process handed to the loop (see `WorkerState::hand_off`).
        let (intake_sender, mut intake) = mpsc::unbounded_channel::<HandOff>();
        let mut handed: Vec<HandOff> = Vec::new();
        let mut claimable = Claimable::default();
        // While the store fails: no claim before this (see `Backoff`).
        let mut backoff = Backoff::default();
        // When durable waits whose deadline passed are next looked for.
        let mut next_sweep = runtime::now();
        // When the maintenance tasks that run while busy are next looked at.
        let mut next_busy_maintenance = runtime::now();
        loop {
            if stop.is_cancelled() {
                break;
            }
            // A timer of a run suspended here is due: sweep now (see `wait_expiry.rs`).
            let timer_due = self.take_due_timers();
            if (timer_due || runtime::now() >= next_sweep) && !backoff.is_failing() {
                self.expire_due_waits().await;
                next_sweep = runtime::now() + settings.polling_interval;
            }
            // A worker that executes runs is never idle: the tasks that must not wait for a
            // pause in the load (schedules, cancel cascades, retention) run here.
            if !in_flight.is_empty()
                && runtime::now() >= next_busy_maintenance
                && !backoff.is_failing()
            {
                self.maintain(Pass::Busy).await;
                next_busy_maintenance = runtime::now() + settings.polling_interval;
            }
            // Reap every finished run first: `len()` counts finished-but-unjoined tasks, and
            // undercounting free slots would claim one run per round trip.
            if reap(&mut in_flight, &mut claimable) {
                backoff.retry_soon();
            }
            handed.extend(std::iter::from_fn(|| intake.try_recv().ok()));
            if !handed.is_empty() {
                self.take_hand_offs(
                    std::mem::take(&mut handed),
                    &worker_id,
                    &stop,
                    &mut in_flight,
                    &mut claimable,
                )
                .await;
                continue;
            }
            let free = settings
                .runs_in_progress()
                .saturating_sub(in_flight.len())
                .min(MAX_CLAIM);
            if free > 0 && backoff.allows_claim() && claimable.should_claim() {
                let sent = runtime::now();
                let claimed = self
                    .store
                    .claim(
                        &ClaimRequest {
                            resume_waiting: self.take_resume_due(),
                            ..ClaimRequest::new(&worker_id, settings.lease_duration, free)
                        },
                        Timestamp::now(),
                    )
                    .await;
                match claimed {
                    Ok(runs) if !runs.is_empty() => {
                        let runs = self.claimed(runs);
                        backoff = Backoff::default();
                        if runs.len() < free {
                            claimable.found_nothing_more();
                        }
                        self.start_runs(runs, sent, &worker_id, &stop, &mut in_flight);
                        continue;
                    }
                    Ok(_) => {
                        backoff = Backoff::default();
                        claimable.found_nothing_more();
                        if in_flight.is_empty() {
                            self.maintain(Pass::Idle).await;
                        }
                    }
                    Err(error) => {
                        let wait = backoff.failed();
                        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "claim failed");
                        self.store_failed(&error, "claim", None);
                    }
                }
            }
            // While the store fails the loop backs off, and triggers enqueue themselves.
            let hand_off = settings.trigger_hand_off && !backoff.is_failing();
            self.set_intake(hand_off.then(|| intake_sender.clone()));
            let now = runtime::now();
            let poll = now + settings.polling_interval;
            let (next_look, by_timer) = match backoff.retry_at() {
                Some(at) if at > now => (at, false),
                _ => match self.next_timer() {
                    Some(timer) if timer < poll => (timer, true),
                    _ => (poll, false),
                },
            };
            // Biased, in this order: no random draw per wake-up (a simulation replays exactly
            // for a seed), and none of these can starve the others: a stop ends the loop; an
            // ended slot, a wake or a notice only sets a flag and the loop comes back to claim;
            // hand-offs are drained by `try_recv` at the top of every round; the poll's timer
            // fires whenever nothing else is ready.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(ended) = in_flight.join_next(), if !in_flight.is_empty() => {
                    backoff.retry_soon();
                    claimable.slot_ended(ended);
                }
                // A wake-up comes after a write that succeeded: the store answers again.
                _ = wake.notified() => {
                    backoff.retry_soon();
                    claimable.look_again();
                }
                notice = next_notice(&mut notices), if notices.is_some() => {
                    if self.handle_notices(notice, &mut notices) {
                        backoff.retry_soon();
                    }
                    claimable.look_again();
                }
                Some(hand_off) = intake.recv() => handed.push(hand_off),
                // An earlier timer: wait for it instead.
                _ = self.timers_changed() => {}
                // A timer's sweep wakes the loop when it resolved waits.
                _ = runtime::sleep_until(next_look), if by_timer => {}
                _ = runtime::sleep_until(next_look), if !by_timer => {
                    // The poll also looks for runs whose wait another process resolved.
                    self.resume_look_due();
                    claimable.look_again();
                }
            }
        }
        // Closed: every hand-off was sent before, and is enqueued here (a stopping worker
        // claims nothing new).
        self.set_intake(None);
        handed.extend(std::iter::from_fn(|| intake.try_recv().ok()));
        if !handed.is_empty() {
            self.take_hand_offs(handed, &worker_id, &stop, &mut in_flight, &mut claimable)
                .await;
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Starts each run of a claim sent at `sent` in a slot of its own.
    fn start_runs(
        self: &Arc<Self>,
        runs: Vec<Run>,
        sent: Instant,
        worker_id: &str,
        stop: &CancellationToken,
        in_flight: &mut Slots<bool>,
    ) {
        for run in runs {
            let engine = self.clone();
            let owner = worker_id.to_owned();
            let stop = stop.clone();
            in_flight.spawn(async move { engine.execute_in_slot(run, sent, &owner, &stop).await });
        }
    }

    /// Enqueues handed-off triggers, all at once. The first also claims for the free slots in
    /// its own transaction, so on an idle worker a trigger's run starts after one commit
    /// instead of two. Each run is announced before its trigger is answered (and so before any
    /// of its own events: see `announcing`); then the claimed runs start.
    async fn take_hand_offs(
        self: &Arc<Self>,
        handed: Vec<HandOff>,
        worker_id: &str,
        stop: &CancellationToken,
        in_flight: &mut Slots<bool>,
        claimable: &mut Claimable,
    ) {
        let settings = &self.settings;
        reap(in_flight, claimable);
        // A stopping worker claims nothing new; the runs are only enqueued.
        let free = match stop.is_cancelled() {
            true => 0,
            false => settings
                .runs_in_progress()
                .saturating_sub(in_flight.len())
                .min(MAX_CLAIM),
        };
        let (sent, now) = (runtime::now(), Timestamp::now());
        let store = &self.store;
        let resume_waiting = free > 0 && self.take_resume_due();
        let outcomes = futures::future::join_all(handed.iter().enumerate().map(|(i, hand_off)| {
            let next = ClaimRequest {
                worker_id: worker_id.to_owned(),
                lease: settings.lease_duration,
                max: if i == 0 { free } else { 0 },
                resume_waiting: i == 0 && resume_waiting,
            };
            async move {
                store
                    .enqueue_and_claim(hand_off.run.clone(), now, &next)
                    .await
            }
        }))
        .await;
        // One hand-off, whose store call (so its claim) went through.
        let looked = handed.len() == 1 && outcomes.iter().all(|outcome| outcome.is_ok());
        let mut claimed = Vec::new();
        for (hand_off, outcome) in handed.into_iter().zip(outcomes) {
            let answer = outcome.map(|(enqueued, runs)| {
                // No wake: this loop claims next.
                self.announce(&enqueued, &hand_off.run);
                claimed.extend(self.claimed(runs));
                enqueued
            });
            let _ = hand_off.reply.send(answer);
        }
        if looked && free > 0 {
            // That claim was a full look, after every enqueue.
            *claimable = Claimable::default();
            if claimed.len() < free {
                claimable.found_nothing_more();
            }
        } else {
            // Runs were enqueued that no claim has looked for.
            claimable.look_again();
        }
        self.start_runs(claimed, sent, worker_id, stop, in_flight);
    }

    /// Applies a notice and every other one already queued: cancels fire the run's token if it
    /// executes here; anything else just lets the loop claim again. Returns whether one of them
    /// came from the database (a run became available or was cancelled), which then answers.
    fn handle_notices(
        &self,
        first: std::result::Result<StoreNotice, broadcast::error::RecvError>,
        notices: &mut Option<broadcast::Receiver<StoreNotice>>,
    ) -> bool {
        let mut from_database = false;
        let mut next = Some(first);
        while let Some(notice) = next.take() {
            match notice {
                Ok(StoreNotice::RunCancelled { run_id }) => {
                    from_database = true;
                    self.cancel_local(&run_id);
                }
                Ok(StoreNotice::StorageFault { operation, error }) => {
                    tracing::warn!(%operation, %error, "storage fault; the store retries");
                    self.metrics.store_error(&operation);
                    self.worker_error(format!("{operation}: {error}"), "storage", None);
                }
                Ok(StoreNotice::RunsAvailable) => from_database = true,
                Ok(StoreNotice::WaitsResolved) => {
                    from_database = true;
                    self.resume_waiting_runs();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    *notices = None;
                    return from_database;
                }
            }
            next = notices
                .as_mut()
                .and_then(|receiver| match receiver.try_recv() {
                    Ok(notice) => Some(Ok(notice)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Some(Err(broadcast::error::RecvError::Closed))
                    }
                    Err(broadcast::error::TryRecvError::Empty) => None,
                });
        }
        from_database
    }

    /// Claims and executes one run; `false` when nothing was claimable. No maintenance.
    pub(crate) async fn process_one(self: &Arc<Self>, worker_id: Option<&str>) -> Result<bool> {
        let worker_id = worker_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("worker_{}", new_id()));
        let settings = &self.settings;
        self.expire_due_waits().await;
        let sent = runtime::now();
        let claimed = self
            .store
            .claim(
                &ClaimRequest::new(&worker_id, settings.lease_duration, 1),
                Timestamp::now(),
            )
            .await?;
        let mut claimed = self.claimed(claimed);
        match claimed.pop() {
            Some(run) => {
                self.execute(run, sent, &worker_id).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Processes runs one after another until none is claimable or `max_runs` were processed;
    /// runs idle maintenance once if it stopped because the queue was idle. Returns the number
    /// of runs processed.
    pub(crate) async fn process_until_idle(
        self: &Arc<Self>,
        worker_id: Option<&str>,
        max_runs: Option<usize>,
    ) -> Result<usize> {
        let worker_id = worker_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("worker_{}", new_id()));
        let mut processed = 0;
        loop {
            if max_runs.is_some_and(|max| processed >= max) {
                return Ok(processed);
            }
            if !self.process_one(Some(&worker_id)).await? {
                break;
            }
            processed += 1;
        }
        self.maintain(Pass::Requested).await;
        Ok(processed)
    }
}

/// Whether the worker loop has to claim: after a look that found nothing more to claim (a
/// claim that took fewer runs than it could, or a slot that ended quietly), the loop does not
/// claim again until something may have changed that: a trigger's wake, a notice, the poll, or
/// a slot that ended otherwise.
#[derive(Default)]
struct Claimable {
    nothing_more: bool,
    look_again: bool,
}

impl Claimable {
    fn found_nothing_more(&mut self) {
        self.nothing_more = true;
    }

    fn look_again(&mut self) {
        self.look_again = true;
    }

    /// Notes how a slot ended: quietly (`true`), or otherwise (failed, cancelled, lease lost,
    /// stopped, panicked), which frees a slot without having looked for the next run.
    fn slot_ended(&mut self, ended: Ended<bool>) {
        match ended {
            Some(true) => self.found_nothing_more(),
            _ => self.look_again(),
        }
    }

    /// Whether to claim now; the claim is the next look, so this starts over.
    fn should_claim(&mut self) -> bool {
        let skip = self.nothing_more && !self.look_again;
        *self = Claimable::default();
        !skip
    }
}

/// Joins every finished slot, noting how each ended; returns whether any had.
fn reap(in_flight: &mut Slots<bool>, claimable: &mut Claimable) -> bool {
    let mut any = false;
    while let Some(ended) = in_flight.try_join_next() {
        claimable.slot_ended(ended);
        any = true;
    }
    any
}

/// The next notice, for `select!` (pending forever without a channel).
async fn next_notice(
    notices: &mut Option<broadcast::Receiver<StoreNotice>>,
) -> std::result::Result<StoreNotice, broadcast::error::RecvError> {
    match notices {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}
