//! Events: everything that happens to runs, as the upstream JSON (`{"type":"run:leased",…}`).
//!
//! Listeners registered with [`Durably::on`](crate::Durably::on) each get their own queue and
//! task, so a slow listener delays only itself and a panicking one is reported to the
//! [`on_error`](crate::Durably::on_error) handler and keeps receiving later events: neither can
//! stall or kill the worker. Per-run streams come from
//! [`Durably::subscribe`](crate::Durably::subscribe).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::run::{Labels, LogLevel, Progress};
use crate::runtime;
use crate::time::Timestamp;

/// One event: what happened plus when (`timestamp`) and in which order (`sequence`, counting
/// from 1 per [`Durably`](crate::Durably) instance; 0 for synthetic "current state" events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// When it was emitted.
    pub timestamp: Timestamp,
    /// Emission order.
    pub sequence: u64,
}

/// The 16 event types, serialized with upstream's `type` strings and camelCase fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(missing_docs)] // field names are self-explanatory and documented per variant
#[non_exhaustive]
pub enum EventKind {
    /// A run was created by trigger, batch trigger or retrigger.
    #[serde(rename = "run:trigger", rename_all = "camelCase")]
    RunTrigger {
        run_id: String,
        job_name: String,
        input: Value,
        labels: Labels,
    },
    /// A trigger was coalesced onto an existing pending run.
    #[serde(rename = "run:coalesced", rename_all = "camelCase")]
    RunCoalesced {
        run_id: String,
        job_name: String,
        /// The reused run's status: `pending`, `leased` or `waiting`.
        status: crate::run::RunStatus,
        labels: Labels,
        skipped_input: Value,
        skipped_labels: Labels,
    },
    /// A run suspended on a durable wait: it gave up its lease and its worker slot.
    #[serde(rename = "run:waiting", rename_all = "camelCase")]
    RunWaiting {
        run_id: String,
        job_name: String,
        labels: Labels,
        wait_id: String,
    },
    /// A worker started executing a claimed run.
    #[serde(rename = "run:leased", rename_all = "camelCase")]
    RunLeased {
        run_id: String,
        job_name: String,
        input: Value,
        lease_owner: String,
        lease_expires_at: String,
        labels: Labels,
    },
    /// A worker renewed its lease.
    #[serde(rename = "run:lease-renewed", rename_all = "camelCase")]
    RunLeaseRenewed {
        run_id: String,
        job_name: String,
        lease_owner: String,
        lease_expires_at: String,
        labels: Labels,
    },
    /// A run completed.
    #[serde(rename = "run:complete", rename_all = "camelCase")]
    RunComplete {
        run_id: String,
        job_name: String,
        output: Value,
        duration: u64,
        labels: Labels,
    },
    /// A run failed.
    #[serde(rename = "run:fail", rename_all = "camelCase")]
    RunFail {
        run_id: String,
        job_name: String,
        error: String,
        failed_step_name: String,
        labels: Labels,
    },
    /// A run was cancelled.
    #[serde(rename = "run:cancel", rename_all = "camelCase")]
    RunCancel {
        run_id: String,
        job_name: String,
        labels: Labels,
    },
    /// A run was deleted.
    #[serde(rename = "run:delete", rename_all = "camelCase")]
    RunDelete {
        run_id: String,
        job_name: String,
        labels: Labels,
    },
    /// A job reported progress.
    #[serde(rename = "run:progress", rename_all = "camelCase")]
    RunProgress {
        run_id: String,
        job_name: String,
        progress: Progress,
        labels: Labels,
    },
    /// A step's function is about to run.
    #[serde(rename = "step:start", rename_all = "camelCase")]
    StepStart {
        run_id: String,
        job_name: String,
        step_name: String,
        step_index: i64,
        labels: Labels,
    },
    /// A step completed and was persisted.
    #[serde(rename = "step:complete", rename_all = "camelCase")]
    StepComplete {
        run_id: String,
        job_name: String,
        step_name: String,
        step_index: i64,
        output: Value,
        duration: u64,
        labels: Labels,
    },
    /// A step failed.
    #[serde(rename = "step:fail", rename_all = "camelCase")]
    StepFail {
        error: String,
        run_id: String,
        job_name: String,
        step_name: String,
        step_index: i64,
        labels: Labels,
    },
    /// A step was interrupted by cancellation.
    #[serde(rename = "step:cancel", rename_all = "camelCase")]
    StepCancel {
        run_id: String,
        job_name: String,
        step_name: String,
        step_index: i64,
        labels: Labels,
    },
    /// A job wrote a log entry.
    #[serde(rename = "log:write", rename_all = "camelCase")]
    LogWrite {
        run_id: String,
        job_name: String,
        labels: Labels,
        step_name: Option<String>,
        level: LogLevel,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    /// The worker hit an error it handled (lease renewal, completion, maintenance, …).
    #[serde(rename = "worker:error", rename_all = "camelCase")]
    WorkerError {
        error: String,
        context: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
    },
}

/// The type of an event, for [`Durably::on`](crate::Durably::on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum EventType {
    RunTrigger,
    RunCoalesced,
    RunWaiting,
    RunLeased,
    RunLeaseRenewed,
    RunComplete,
    RunFail,
    RunCancel,
    RunDelete,
    RunProgress,
    StepStart,
    StepComplete,
    StepFail,
    StepCancel,
    LogWrite,
    WorkerError,
}

impl EventType {
    /// The wire string, e.g. `run:leased`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunTrigger => "run:trigger",
            EventType::RunCoalesced => "run:coalesced",
            EventType::RunWaiting => "run:waiting",
            EventType::RunLeased => "run:leased",
            EventType::RunLeaseRenewed => "run:lease-renewed",
            EventType::RunComplete => "run:complete",
            EventType::RunFail => "run:fail",
            EventType::RunCancel => "run:cancel",
            EventType::RunDelete => "run:delete",
            EventType::RunProgress => "run:progress",
            EventType::StepStart => "step:start",
            EventType::StepComplete => "step:complete",
            EventType::StepFail => "step:fail",
            EventType::StepCancel => "step:cancel",
            EventType::LogWrite => "log:write",
            EventType::WorkerError => "worker:error",
        }
    }

    /// Domain events: trigger, coalesced, waiting, complete, fail, cancel, delete.
    pub fn is_domain(self) -> bool {
        matches!(
            self,
            EventType::RunTrigger
                | EventType::RunCoalesced
                | EventType::RunWaiting
                | EventType::RunComplete
                | EventType::RunFail
                | EventType::RunCancel
                | EventType::RunDelete
        )
    }
}

impl EventKind {
    /// This event's type.
    pub fn event_type(&self) -> EventType {
        match self {
            EventKind::RunTrigger { .. } => EventType::RunTrigger,
            EventKind::RunCoalesced { .. } => EventType::RunCoalesced,
            EventKind::RunWaiting { .. } => EventType::RunWaiting,
            EventKind::RunLeased { .. } => EventType::RunLeased,
            EventKind::RunLeaseRenewed { .. } => EventType::RunLeaseRenewed,
            EventKind::RunComplete { .. } => EventType::RunComplete,
            EventKind::RunFail { .. } => EventType::RunFail,
            EventKind::RunCancel { .. } => EventType::RunCancel,
            EventKind::RunDelete { .. } => EventType::RunDelete,
            EventKind::RunProgress { .. } => EventType::RunProgress,
            EventKind::StepStart { .. } => EventType::StepStart,
            EventKind::StepComplete { .. } => EventType::StepComplete,
            EventKind::StepFail { .. } => EventType::StepFail,
            EventKind::StepCancel { .. } => EventType::StepCancel,
            EventKind::LogWrite { .. } => EventType::LogWrite,
            EventKind::WorkerError { .. } => EventType::WorkerError,
        }
    }

    /// The run this event is about (`None` for worker errors without a run).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            EventKind::RunTrigger { run_id, .. }
            | EventKind::RunCoalesced { run_id, .. }
            | EventKind::RunWaiting { run_id, .. }
            | EventKind::RunLeased { run_id, .. }
            | EventKind::RunLeaseRenewed { run_id, .. }
            | EventKind::RunComplete { run_id, .. }
            | EventKind::RunFail { run_id, .. }
            | EventKind::RunCancel { run_id, .. }
            | EventKind::RunDelete { run_id, .. }
            | EventKind::RunProgress { run_id, .. }
            | EventKind::StepStart { run_id, .. }
            | EventKind::StepComplete { run_id, .. }
            | EventKind::StepFail { run_id, .. }
            | EventKind::StepCancel { run_id, .. }
            | EventKind::LogWrite { run_id, .. } => Some(run_id),
            EventKind::WorkerError { run_id, .. } => run_id.as_deref(),
        }
    }
}

impl Event {
    /// This event's type.
    pub fn event_type(&self) -> EventType {
        self.kind.event_type()
    }

    /// `true` for domain events (upstream `isDomainEvent`).
    pub fn is_domain(&self) -> bool {
        self.event_type().is_domain()
    }
}

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;
type ErrorHandler = Arc<dyn Fn(&str, &Event) + Send + Sync>;

struct ListenerEntry {
    id: u64,
    filter: Option<EventType>,
    queue: mpsc::UnboundedSender<Arc<Event>>,
}

/// Removes a listener registered with [`Durably::on`](crate::Durably::on).
#[derive(Debug)]
pub struct Unsubscribe {
    id: u64,
    bus: std::sync::Weak<BusInner>,
}

impl Unsubscribe {
    /// Stops delivery to the listener (events already queued are dropped).
    pub fn unsubscribe(self) {
        if let Some(bus) = self.bus.upgrade() {
            write(&bus.listeners).retain(|l| l.id != self.id);
        }
    }
}

/// The event hub of one [`Durably`](crate::Durably) instance.
#[derive(Clone, Default)]
pub(crate) struct EventBus {
    inner: Arc<BusInner>,
}

#[derive(Default)]
pub(crate) struct BusInner {
    sequence: AtomicU64,
    next_id: AtomicU64,
    listeners: RwLock<Vec<ListenerEntry>>,
    on_error: RwLock<Option<ErrorHandler>>,
    run_streams: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Arc<Event>>>>>,
    /// `run_streams` size that triggers the next prune of dropped subscriptions.
    run_streams_watermark: std::sync::atomic::AtomicUsize,
    all_streams: Mutex<Vec<mpsc::UnboundedSender<Arc<Event>>>>,
}

impl std::fmt::Debug for BusInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EventBus {
    /// Stamps and delivers an event; never blocks on listeners.
    pub(crate) fn emit(&self, kind: EventKind) -> Arc<Event> {
        let event = Arc::new(Event {
            kind,
            timestamp: Timestamp::now(),
            sequence: self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1,
        });
        let event_type = event.event_type();
        {
            let listeners = read(&self.inner.listeners);
            for listener in listeners.iter() {
                if listener.filter.is_none_or(|f| f == event_type) {
                    let _ = listener.queue.send(event.clone());
                }
            }
        }
        if let Some(run_id) = event.kind.run_id() {
            let mut streams = lock(&self.inner.run_streams);
            if let Some(senders) = streams.get_mut(run_id) {
                senders.retain(|s| s.send(event.clone()).is_ok());
                if senders.is_empty() {
                    streams.remove(run_id);
                }
            }
        }
        {
            let mut all = lock(&self.inner.all_streams);
            if !all.is_empty() {
                all.retain(|s| s.send(event.clone()).is_ok());
            }
        }
        event
    }

    /// Emits the event built by `build` only if someone observes it: a listener of its type, a
    /// stream of its run, or an all-events stream. Saves building (and cloning into) events on
    /// the hot path when nobody listens; `sequence` stays increasing for every observer.
    pub(crate) fn emit_if_observed(
        &self,
        event_type: EventType,
        run_id: &str,
        build: impl FnOnce() -> EventKind,
    ) {
        let observed = read(&self.inner.listeners)
            .iter()
            .any(|l| l.filter.is_none_or(|f| f == event_type))
            || lock(&self.inner.run_streams).contains_key(run_id)
            || !lock(&self.inner.all_streams).is_empty();
        if observed {
            self.emit(build());
        }
    }

    /// Registers a listener served by its own task (requires a tokio runtime).
    pub(crate) fn on(&self, filter: Option<EventType>, listener: Listener) -> Unsubscribe {
        let (queue, mut receiver) = mpsc::unbounded_channel::<Arc<Event>>();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        write(&self.inner.listeners).push(ListenerEntry { id, filter, queue });
        let bus = Arc::downgrade(&self.inner);
        runtime::spawn(async move {
            while let Some(event) = receiver.recv().await {
                let call = AssertUnwindSafe(|| listener(&event));
                if let Err(panic) = std::panic::catch_unwind(call) {
                    let message = panic_message(&*panic);
                    tracing::warn!(event = event.event_type().as_str(), %message, "event listener panicked");
                    let handler = bus.upgrade().and_then(|b| read(&b.on_error).clone());
                    if let Some(handler) = handler {
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            handler(&message, &event)
                        }));
                    }
                }
            }
        });
        Unsubscribe {
            id,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// Sets the single listener-error handler.
    pub(crate) fn set_on_error(&self, handler: ErrorHandler) {
        *write(&self.inner.on_error) = Some(handler);
    }

    /// A queue receiving every later event of one run.
    pub(crate) fn subscribe_run(&self, run_id: &str) -> mpsc::UnboundedReceiver<Arc<Event>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut streams = lock(&self.inner.run_streams);
        // A dropped subscription of a run that emits nothing more (e.g. one already finished)
        // would otherwise stay forever: prune whenever the map doubled since the last prune.
        let watermark = self.inner.run_streams_watermark.load(Ordering::Relaxed);
        if streams.len() >= watermark.max(64) {
            streams.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            self.inner
                .run_streams_watermark
                .store(streams.len() * 2, Ordering::Relaxed);
        }
        streams.entry(run_id.to_owned()).or_default().push(sender);
        receiver
    }

    /// Open per-run and all-event queues; queues whose receiver is gone are pruned first.
    pub(crate) fn open_streams(&self) -> usize {
        let per_run: usize = {
            let mut streams = lock(&self.inner.run_streams);
            streams.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            streams.values().map(Vec::len).sum()
        };
        let mut all = lock(&self.inner.all_streams);
        all.retain(|s| !s.is_closed());
        per_run + all.len()
    }

    /// A queue receiving every later event.
    pub(crate) fn subscribe_all(&self) -> mpsc::UnboundedReceiver<Arc<Event>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut all = lock(&self.inner.all_streams);
        all.retain(|s| !s.is_closed());
        all.push(sender);
        receiver
    }
}

/// Runs an async callback, swallowing a panic (callbacks of waits must not break the wait).
pub(crate) async fn call_guarded<F: std::future::Future<Output = ()>>(future: F) {
    let _ = AssertUnwindSafe(future).catch_unwind().await;
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "listener panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_subscriptions_of_quiet_runs_do_not_accumulate() {
        let bus = EventBus::default();
        for i in 0..10_000 {
            drop(bus.subscribe_run(&format!("finished-run-{i}")));
        }
        let kept = lock(&bus.inner.run_streams).len();
        assert!(kept <= 128, "{kept} dead subscriptions kept");
        let live: Vec<_> = (0..500)
            .map(|i| bus.subscribe_run(&format!("live-{i}")))
            .collect();
        assert!(lock(&bus.inner.run_streams).len() >= live.len());
    }
}
