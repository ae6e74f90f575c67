//! A worker's slots: each executes one run after another, handing its slot from a finished
//! run to the next one in the same write, claiming one run ahead after short runs, and giving
//! back a held run once the run executing in its slot turns out long. Also the intake through
//! which triggers of this process reach the worker loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::execute::{Ended, Execution};
use super::held::Held;
use super::{Engine, lock};
use crate::error::Result;
use crate::run::Run;
use crate::runtime::{self, Instant};
use crate::store::{Enqueued, NewRun};
use crate::telemetry;

/// A trigger handed to the worker loop: the run to enqueue and where its outcome goes.
pub(crate) struct HandOff {
    pub(super) run: NewRun,
    pub(super) reply: oneshot::Sender<Result<Enqueued>>,
}

/// What became of a trigger offered to the worker loop.
pub(crate) enum Handed {
    /// The loop took it; its outcome comes on the receiver.
    Taken(oneshot::Receiver<Result<Enqueued>>),
    /// The loop is not waiting: the caller enqueues the run itself.
    Refused(Box<NewRun>),
}

/// The sending side of the worker loop's intake; `None` while the loop does not take
/// hand-offs.
#[derive(Default)]
pub(super) struct Intake(Mutex<Option<mpsc::UnboundedSender<HandOff>>>);

impl Engine {
    /// Hands a trigger to the worker loop if its intake is open: the loop enqueues the run and
    /// claims for its free slots in the same transaction (one commit fewer before the run
    /// starts), announces the run, and answers on the returned receiver. Gives the run back when
    /// the worker is stopped, not running or backing off; the caller then enqueues it itself.
    pub(crate) fn hand_off(&self, run: NewRun) -> Handed {
        let intake = lock(&self.intake.0);
        let Some(sender) = intake.as_ref() else {
            return Handed::Refused(Box::new(run));
        };
        let (reply, answer) = oneshot::channel();
        match sender.send(HandOff { run, reply }) {
            Ok(()) => Handed::Taken(answer),
            Err(unsent) => Handed::Refused(Box::new(unsent.0.run)),
        }
    }

    /// Opens (`Some`) or closes the intake of hand-offs.
    pub(super) fn set_intake(&self, sender: Option<mpsc::UnboundedSender<HandOff>>) {
        *lock(&self.intake.0) = sender;
    }

    /// Executes a claimed run in one of the worker's slots, then the runs claimed with each
    /// completion, until one finishes with nothing left to claim or the worker is stopping (a
    /// stopping worker claims nothing new, but executes the runs it holds).
    ///
    /// The slot is free for the next run as soon as a job function returns: the completion is
    /// written while the next run executes, so the next run's first step and the completion
    /// share a write. For that the slot *claims ahead* (see [`Tuning::claim_ahead_below`]):
    /// after a run that executed for less than `claim_ahead_below`, its completion claims one
    /// run more than the slot needs at once, and the slot holds it (leased, its lease renewed)
    /// until the run executing returns (not with a local queue, whose runs wait for turns). At most one run per slot is held; a held run without
    /// a concurrency key goes back to pending once the run executing has taken
    /// `claim_ahead_below` (it may be long), so that an idle worker takes it.
    ///
    /// Returns `true` when the slot ends *quietly*: its last completion's claim found nothing,
    /// so nothing was claimable a moment ago.
    ///
    /// [`Tuning::claim_ahead_below`]: crate::Tuning::claim_ahead_below
    pub(super) async fn execute_in_slot(
        self: &Arc<Self>,
        run: Run,
        sent: Instant,
        worker_id: &str,
        stop: &CancellationToken,
    ) -> bool {
        let claim_ahead_below = self.settings.claim_ahead_below;
        let mut held = VecDeque::from([self.hold(run, sent, worker_id)]);
        let mut ending: Option<futures::future::BoxFuture<'_, Ended>> = None;
        let mut quiet = false;
        let mut take = |ended: Ended, held: &mut VecDeque<Held>| {
            quiet = ended.looked && ended.claimed.is_empty();
            let sent = ended.claim_sent;
            let claimed = ended.claimed.into_iter();
            held.extend(claimed.map(|run| self.hold(run, sent, worker_id)));
        };
        loop {
            let Some(next) = held.pop_front() else {
                match ending.take() {
                    Some(end) => {
                        take(end.await, &mut held);
                        continue;
                    }
                    None => break,
                }
            };
            let span = next.span.clone();
            let execution = self.run_job(next, Some(stop)).instrument(span.clone());
            let mut execution = std::pin::pin!(execution);
            let release_at = runtime::now() + claim_ahead_below;
            let execution = loop {
                // Biased (no random draw; a simulation replays exactly): the previous run's
                // end first, so the runs it claimed are held (their leases kept) as soon as
                // the claim answers; then the execution; the release timer last. Neither can
                // starve the execution: the end completes once, and the timer is disarmed
                // once the held runs without a key are released.
                tokio::select! {
                    biased;
                    ended = pending_or(&mut ending), if ending.is_some() => {
                        ending = None;
                        take(ended, &mut held);
                    }
                    execution = &mut execution => break execution,
                    _ = runtime::sleep_until(release_at), if releasable(&held) => {
                        for run in std::mem::take(&mut held) {
                            match run.run.concurrency_key {
                                None => self.release_held(run),
                                Some(_) => held.push_back(run),
                            }
                        }
                    }
                }
            };
            if let Some(end) = ending.take() {
                take(end.await, &mut held);
            }
            let returned = match execution {
                Execution::Returned(returned) => returned,
                Execution::Ended(outcome) => {
                    telemetry::run_ended(&span, outcome);
                    continue;
                }
            };
            // One run to execute next, plus one held ahead after a short execution of a run
            // without a concurrency key. After a keyed run the slot does not claim ahead: in a
            // queue of keyed runs, runs held ahead hold their keys, which other slots could
            // run meanwhile (measured: `keyed-1step` on SQLite, 8 slots and 8 keys, 450 jobs/s
            // claiming ahead, 3,400 without).
            // With a local queue the worker holds runs already (each in a slot of its own,
            // waiting for a turn): a run held ahead would wait for a turn too, past
            // `claim_ahead_below`, and go back to pending (measured: 4 processes holding 256
            // runs each spent their time giving held runs back, 2,000 jobs/s against 8,000
            // at 64).
            let short = returned.elapsed < claim_ahead_below && self.execution_permits.is_none();
            let wanted: usize = match short && returned.run.concurrency_key.is_none() {
                true => 2,
                false => 1,
            };
            let claim = match stop.is_cancelled() {
                true => 0,
                false => wanted.saturating_sub(held.len()),
            };
            let end = self.record_end(returned, worker_id, claim);
            let recorded = span.clone();
            let end = async move {
                let ended = end.await;
                telemetry::run_ended(&recorded, ended.outcome);
                ended
            };
            ending = Some(Box::pin(end.instrument(span)));
        }
        quiet
    }
}

/// The output of a future that may be absent (then pending forever, for `select!`).
async fn pending_or<F: std::future::Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Whether a slot holds a run that may go back to pending (one without a concurrency key).
fn releasable(held: &VecDeque<Held>) -> bool {
    held.iter().any(|held| held.run.concurrency_key.is_none())
}
