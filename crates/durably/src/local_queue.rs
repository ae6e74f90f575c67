//! The local queue ([`Tuning::local_queue`](crate::Tuning::local_queue)): a worker keeps more
//! claimed runs in progress than `max_concurrent_runs`, and at most `max_concurrent_runs` of
//! them execute job code at once.
//!
//! A run holds a turn while its job function runs and gives it back while it waits for a
//! completed step's checkpoint to become durable, so that another run executes meanwhile and
//! the checkpoints of many runs share one commit. After the commit the run waits for a turn
//! again before its job function goes on. A step's result is still durable before the job
//! continues: only the waiting is shared.
//!
//! Runs that have started go first: a freed turn goes to a run waiting to continue before a
//! run waiting to start (each kind first come, first served). A started run then finishes
//! soon after its last checkpoint instead of queueing behind every run claimed after it, and
//! a worker starts new runs only when its started ones leave turns free.
//!
//! Without a local queue (the default) no turns exist: a run's slot is the limit, as
//! upstream's `maxConcurrentRuns`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The turns of one worker: `max_concurrent_runs` of them.
pub(crate) type ExecutionPermits = Arc<Turns>;

/// Turns to execute job code, handed to waiting runs that have started before runs that
/// have not.
pub(crate) struct Turns {
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Turns nobody waits for.
    free: usize,
    /// Runs waiting to continue after a checkpoint.
    started: VecDeque<oneshot::Sender<Turn>>,
    /// Runs waiting for their first turn.
    starting: VecDeque<oneshot::Sender<Turn>>,
}

/// Which queue a waiting run joins.
#[derive(Clone, Copy)]
enum Kind {
    Starting,
    Started,
}

impl Turns {
    /// `count` turns, all free.
    pub(crate) fn new(count: usize) -> Arc<Self> {
        Arc::new(Turns {
            state: Mutex::new(Waiting {
                free: count,
                ..Waiting::default()
            }),
        })
    }

    /// Waits for a turn. Cancel-safe: a turn handed to a waiter that has gone is handed on.
    async fn take(self: &Arc<Self>, kind: Kind) -> Turn {
        let receiver = {
            let mut waiting = self.waiting();
            if waiting.free > 0 {
                waiting.free -= 1;
                return Turn {
                    turns: Some(self.clone()),
                };
            }
            let (sender, receiver) = oneshot::channel();
            match kind {
                Kind::Started => waiting.started.push_back(sender),
                Kind::Starting => waiting.starting.push_back(sender),
            }
            receiver
        };
        match receiver.await {
            Ok(turn) => turn,
            // Senders are dropped only by `hand_on`, after a send; never reached. A run
            // going on without a turn is the harmless outcome were it reached.
            Err(_) => Turn { turns: None },
        }
    }

    /// A turn came back: to the first waiting started run, else the first waiting new run,
    /// else free.
    fn hand_on(self: &Arc<Self>) {
        let mut waiting = self.waiting();
        loop {
            let next = match waiting.started.pop_front() {
                Some(next) => next,
                None => match waiting.starting.pop_front() {
                    Some(next) => next,
                    None => {
                        waiting.free += 1;
                        return;
                    }
                },
            };
            let turn = Turn {
                turns: Some(self.clone()),
            };
            if let Err(mut unwanted) = next.send(turn) {
                // That waiter has gone: disarm the turn (no hand-on from inside this lock)
                // and try the next.
                unwanted.turns = None;
            } else {
                return;
            }
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A turn to execute job code; handed on when dropped (also when dropped unreceived in a
/// channel whose waiter has gone).
pub(crate) struct Turn {
    turns: Option<Arc<Turns>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(turns) = self.turns.take() {
            turns.hand_on();
        }
    }
}

/// One run's turn, when the worker has a local queue.
#[derive(Default)]
pub(crate) struct RunPermit {
    permits: Option<ExecutionPermits>,
    held: Mutex<Option<Turn>>,
}

impl RunPermit {
    /// A run's turn among `permits` (none: no local queue, nothing to wait for).
    pub(crate) fn among(permits: Option<ExecutionPermits>) -> Self {
        RunPermit {
            permits,
            held: Mutex::new(None),
        }
    }

    /// Waits for the run's first turn, unless it holds one (or the worker has no local
    /// queue).
    pub(crate) async fn enter(&self) {
        self.take(Kind::Starting).await;
    }

    async fn take(&self, kind: Kind) {
        let Some(permits) = &self.permits else {
            return;
        };
        if self.held().is_some() {
            return;
        }
        let turn = permits.take(kind).await;
        let mut held = self.held();
        if held.is_none() {
            *held = Some(turn);
        }
    }

    /// Gives the turn back (the job function returned).
    pub(crate) fn leave(&self) {
        // Dropped after the lock is released: the hand-on takes the turns' own lock.
        let turn = self.held().take();
        drop(turn);
    }

    /// Awaits `write` without the turn, then waits for one again (ahead of the runs waiting
    /// to start) if it held one.
    pub(crate) async fn parked<F: std::future::Future>(&self, write: F) -> F::Output {
        if self.permits.is_none() {
            return write.await;
        }
        let turn = self.held().take();
        let given_back = turn.is_some();
        drop(turn);
        let output = write.await;
        if given_back {
            self.take(Kind::Started).await;
        }
        output
    }

    fn held(&self) -> MutexGuard<'_, Option<Turn>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `future` once; `Some` if it completed.
    fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        match future.poll(&mut context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_freed_turn_goes_to_a_started_run_before_a_starting_one() {
        let turns = Turns::new(1);
        let first = turns.take(Kind::Starting).await;
        let mut starting = Box::pin(turns.take(Kind::Starting));
        let mut started = Box::pin(turns.take(Kind::Started));
        assert!(poll_once(starting.as_mut()).is_none());
        assert!(poll_once(started.as_mut()).is_none());
        drop(first);
        assert!(
            poll_once(starting.as_mut()).is_none(),
            "the new run went first"
        );
        let second = poll_once(started.as_mut()).expect("the started run has the turn");
        drop(second);
        assert!(poll_once(starting.as_mut()).is_some());
    }

    #[tokio::test]
    async fn a_turn_handed_to_a_waiter_that_has_gone_is_handed_on() {
        let turns = Turns::new(1);
        let first = turns.take(Kind::Starting).await;
        let mut gone = Box::pin(turns.take(Kind::Started));
        let mut next = Box::pin(turns.take(Kind::Starting));
        assert!(poll_once(gone.as_mut()).is_none());
        assert!(poll_once(next.as_mut()).is_none());
        // Handed to `gone`'s channel, then `gone` is dropped without receiving it.
        drop(first);
        drop(gone);
        let turn = poll_once(next.as_mut()).expect("the turn reached the next waiter");
        drop(turn);
        assert_eq!(turns.waiting().free, 1, "the turn is free again, not lost");
    }

    #[tokio::test]
    async fn a_waiter_that_went_before_its_turn_is_skipped() {
        let turns = Turns::new(1);
        let first = turns.take(Kind::Starting).await;
        let mut gone = Box::pin(turns.take(Kind::Started));
        assert!(poll_once(gone.as_mut()).is_none());
        drop(gone);
        drop(first);
        assert_eq!(turns.waiting().free, 1);
        assert!(turns.waiting().started.is_empty());
    }
}
