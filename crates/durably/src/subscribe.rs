//! Event streams: every event ([`Durably::subscribe_all`](crate::Durably::subscribe_all)) or one run's, including what other
//! processes do to it ([`Durably::subscribe`](crate::Durably::subscribe)).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use serde_json::Value;

use crate::durably::Durably;
use crate::events::{Event, EventKind, EventType};
use crate::follow::RunSnapshot;
use crate::run::{Run, RunStatus};
use crate::runtime;
use crate::time::Timestamp;

impl Durably {
    /// How many event streams are open ([`subscribe`](Self::subscribe),
    /// [`subscribe_all`](Self::subscribe_all) and waits in progress); streams already dropped
    /// are pruned first. For leak checks and metrics.
    pub fn open_event_streams(&self) -> usize {
        self.inner.events.open_streams()
    }

    /// A stream of every event emitted from now on (for dashboards and `/runs/subscribe`).
    /// Dropping the stream unsubscribes.
    pub fn subscribe_all(&self) -> impl Stream<Item = Event> + Send + 'static {
        let live = self.inner.events.subscribe_all();
        futures::stream::unfold(live, |mut live| async move {
            let event = live.recv().await?;
            Some(((*event).clone(), live))
        })
    }

    /// A stream of one run's events, as upstream's: it listens from this call on, and when first
    /// polled reads the run's current state. It yields the live events that arrived in between
    /// (in order), then that state as synthetic events with `sequence` 0 (`run:leased` plus
    /// `run:progress` while leased; the terminal event of a finished run), then live events.
    /// A live event may therefore precede or repeat a synthetic one. While no worker of this
    /// process executes the run (another process does), the stream reads it every polling
    /// interval and yields what changed as synthetic events (`run:leased`, `step:complete`,
    /// `run:progress`, the end). It ends after the run's `run:complete`, `run:fail`,
    /// `run:cancel` or `run:delete` (for a cancel made by another process, once the worker
    /// executing the run notices it). Dropping the stream unsubscribes.
    pub fn subscribe(&self, run_id: &str) -> impl Stream<Item = Event> + Send + 'static {
        let live = self.inner.events.subscribe_run(run_id);
        let state = SubscribeState {
            durably: self.clone(),
            run_id: run_id.to_owned(),
            live,
            queued: VecDeque::new(),
            started: false,
            closed: false,
            observed: None,
            rebaseline: false,
            lease_sighted: false,
            announced_lease: None,
        };
        futures::stream::unfold(state, |mut state| async move {
            let event = state.next().await?;
            Some((event, state))
        })
    }
}

struct SubscribeState {
    durably: Durably,
    run_id: String,
    live: tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>,
    queued: VecDeque<Event>,
    started: bool,
    closed: bool,
    /// The run as last read from the store, while another process executes it (`None`: not
    /// seen yet, or executing here, whose events arrive live).
    observed: Option<RunSnapshot>,
    /// The run executed here since the last read: the next read is only a starting point.
    rebaseline: bool,
    /// A read found the pending run leased (announced when the next read confirms it).
    lease_sighted: bool,
    /// The lease owner of the `run:leased` the starting state announced: the relay of that
    /// same claim (`durably serve`'s mirror), arriving as the next live event, is not repeated.
    announced_lease: Option<String>,
}

const SUBSCRIBED_TYPES: [EventType; 11] = [
    EventType::RunLeased,
    EventType::RunWaiting,
    EventType::RunComplete,
    EventType::RunFail,
    EventType::RunCancel,
    EventType::RunDelete,
    EventType::RunProgress,
    EventType::StepStart,
    EventType::StepComplete,
    EventType::StepFail,
    EventType::LogWrite,
];

/// An event a run stream makes up from the store (`sequence` 0, as upstream's current-state
/// events).
fn synthetic_event(kind: EventKind) -> Event {
    Event {
        kind,
        timestamp: Timestamp::now(),
        sequence: 0,
    }
}

fn ends_stream(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::RunComplete | EventType::RunFail | EventType::RunCancel | EventType::RunDelete
    )
}

impl SubscribeState {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            if !self.started {
                self.started = true;
                let current = self.durably.get_run(&self.run_id).await;
                // Live events that arrived since `subscribe` come first, as if delivered when
                // they happened (upstream §7); one that ends the stream makes the current state
                // moot.
                while let Ok(event) = self.live.try_recv() {
                    let event_type = event.event_type();
                    if SUBSCRIBED_TYPES.contains(&event_type) {
                        self.queued.push_back((*event).clone());
                        if ends_stream(event_type) {
                            self.closed = true;
                            break;
                        }
                    }
                }
                if self.closed {
                    continue;
                }
                match current {
                    Ok(Some(run)) => {
                        if self.durably.inner.config.follow_runs_elsewhere {
                            self.observed = Some(RunSnapshot::of(&run));
                        }
                        self.queue_current_state(run);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(run_id = %self.run_id, %error, "subscribe could not read the run");
                        self.closed = true;
                    }
                }
                continue;
            }
            // A run that another process executes: its events never reach this one, so the
            // stream reads the store after each polling interval without a live event.
            let event = match self.observed.is_some() {
                true => {
                    let every = self.durably.inner.config.polling_interval;
                    tokio::select! {
                        event = self.live.recv() => event?,
                        () = runtime::sleep(every) => {
                            self.follow().await;
                            continue;
                        }
                    }
                }
                false => self.live.recv().await?,
            };
            let event_type = event.event_type();
            if !SUBSCRIBED_TYPES.contains(&event_type) {
                continue;
            }
            // The starting state was read after the claim but before its event arrived: it
            // announced this lease already.
            let announced = self.announced_lease.take();
            if let EventKind::RunLeased { lease_owner, .. } = &event.kind
                && announced.as_deref() == Some(lease_owner.as_str())
            {
                continue;
            }
            if ends_stream(event_type) {
                self.closed = true;
            }
            return Some((*event).clone());
        }
    }

    /// Reads the run and queues, as synthetic events, what changed since it was last read:
    /// its lease, newly completed steps, progress, its end (or deletion), unless it is
    /// executing in this process, whose own events arrive live.
    async fn follow(&mut self) {
        if self.durably.inner.engine.is_executing(&self.run_id) {
            // Its events arrived live: once it is no longer here (another worker may take it
            // over), the next read is only a new starting point.
            self.rebaseline = true;
            return;
        }
        let store = &self.durably.inner.store;
        let run = match store.get_run(&self.run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                self.closed = true;
                if let Some(seen) = self.observed.take() {
                    self.queued.push_back(synthetic_event(EventKind::RunDelete {
                        run_id: self.run_id.clone(),
                        job_name: seen.job_name,
                        labels: seen.labels,
                    }));
                }
                return;
            }
            Err(error) => {
                tracing::debug!(run_id = %self.run_id, %error, "subscribe could not follow the run");
                return;
            }
        };
        let before = self.observed.replace(RunSnapshot::of(&run));
        let Some(before) = before.filter(|_| !std::mem::take(&mut self.rebaseline)) else {
            return;
        };
        if before.status == RunStatus::Pending
            && run.status == RunStatus::Leased
            && !std::mem::replace(&mut self.lease_sighted, true)
        {
            // A worker of this process may have claimed it a moment ago and not be executing
            // it yet (its events then come live): announced if still so at the next read.
            self.observed = Some(before);
            return;
        }
        let steps = match before.needs_steps(&run) {
            true => store.get_steps(&run.id).await.unwrap_or_default(),
            false => Vec::new(),
        };
        for kind in before.changes(&run, &steps) {
            if ends_stream(kind.event_type()) {
                self.closed = true;
            }
            self.queued.push_back(synthetic_event(kind));
        }
    }

    fn queue_current_state(&mut self, run: Run) {
        let synthetic = synthetic_event;
        let (run_id, job_name, labels) = (run.id.clone(), run.job_name.clone(), run.labels.clone());
        match run.status {
            RunStatus::Leased => {
                self.announced_lease = run.lease_owner.clone();
                self.queued.push_back(synthetic(EventKind::RunLeased {
                    run_id: run_id.clone(),
                    job_name: job_name.clone(),
                    input: run.input,
                    lease_owner: run.lease_owner.unwrap_or_default(),
                    lease_expires_at: run
                        .lease_expires_at
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    labels: labels.clone(),
                }));
                if let Some(progress) = run.progress {
                    self.queued.push_back(synthetic(EventKind::RunProgress {
                        run_id,
                        job_name,
                        progress,
                        labels,
                    }));
                }
            }
            RunStatus::Completed => {
                self.queued.push_back(synthetic(EventKind::RunComplete {
                    run_id,
                    job_name,
                    output: run.output.unwrap_or(Value::Null),
                    duration: 0,
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Failed => {
                self.queued.push_back(synthetic(EventKind::RunFail {
                    run_id,
                    job_name,
                    error: run.error.unwrap_or_else(|| "Unknown error".into()),
                    failed_step_name: String::new(),
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Cancelled => {
                self.queued.push_back(synthetic(EventKind::RunCancel {
                    run_id,
                    job_name,
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Waiting => {
                self.queued.push_back(synthetic(EventKind::RunWaiting {
                    run_id: run_id.clone(),
                    job_name: job_name.clone(),
                    labels: labels.clone(),
                    wait_id: run.waiting_on_wait_id.unwrap_or_default(),
                }));
                if let Some(progress) = run.progress {
                    self.queued.push_back(synthetic(EventKind::RunProgress {
                        run_id,
                        job_name,
                        progress,
                        labels,
                    }));
                }
            }
            _ => {}
        }
    }
}
