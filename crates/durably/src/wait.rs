//! Waiting for a run: [`Durably::wait_for_run`](crate::Durably::wait_for_run), trigger-and-wait, and the live progress and
//! log callbacks of [`WaitOptions`](crate::WaitOptions).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::durably::Durably;
use crate::error::{Error, Result};
use crate::events::{Event, EventKind};
use crate::run::{LogLevel, Progress, Run, RunStatus, TriggerAndWaitResult, TriggerOptions};
use crate::runtime;

/// A live log entry passed to [`WaitOptions::on_log`](crate::WaitOptions::on_log).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LogEntry {
    /// Severity.
    pub level: LogLevel,
    /// Message.
    pub message: String,
    /// Structured data.
    pub data: Option<Value>,
    /// The step executing when it was written.
    pub step_name: Option<String>,
}

type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;
type LogCallback = Arc<dyn Fn(&LogEntry) + Send + Sync>;

/// Options of [`Durably::wait_for_run`](crate::Durably::wait_for_run) and `trigger_and_wait`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct WaitOptions {
    /// Give up after this long (the run itself is unaffected).
    pub timeout: Option<Duration>,
    /// How often to poll the database for changes made by other processes
    /// (default: the instance's polling interval).
    pub polling_interval: Option<Duration>,
    /// Called for each live `run:progress` of the run.
    pub on_progress: Option<ProgressCallback>,
    /// Called for each live `log:write` of the run.
    pub on_log: Option<LogCallback>,
}

impl std::fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitOptions")
            .field("timeout", &self.timeout)
            .field("polling_interval", &self.polling_interval)
            .finish_non_exhaustive()
    }
}

impl WaitOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the storage polling interval.
    pub fn polling_interval(mut self, interval: Duration) -> Self {
        self.polling_interval = Some(interval);
        self
    }

    /// Sets the progress callback.
    pub fn on_progress(mut self, callback: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(callback));
        self
    }

    /// Sets the log callback.
    pub fn on_log(mut self, callback: impl Fn(&LogEntry) + Send + Sync + 'static) -> Self {
        self.on_log = Some(Arc::new(callback));
        self
    }
}

impl Durably {
    /// Triggers a run and waits for it (untyped form of [`JobHandle::trigger_and_wait`](crate::JobHandle::trigger_and_wait)).
    pub async fn trigger_and_wait_json(
        &self,
        job_name: &str,
        input: Value,
        options: TriggerOptions,
        wait: WaitOptions,
    ) -> Result<TriggerAndWaitResult> {
        // With callbacks, listen before the run exists: a worker of this process may start it
        // (and report progress) before the trigger returns. Terminal states need no such care:
        // the wait's first read sees them.
        let early = (wait.on_progress.is_some() || wait.on_log.is_some())
            .then(|| self.inner.events.subscribe_all());
        let triggered = self.trigger_json(job_name, input, options).await?;
        let output = match self
            .wait_inner(&triggered.run.id, wait, "triggerAndWait", false, early)
            .await?
        {
            Settled::Run(run) => run.output,
            Settled::Output(output) => output,
        };
        Ok(TriggerAndWaitResult {
            id: triggered.run.id,
            output,
            disposition: triggered.disposition,
        })
    }

    /// Waits until a run completes and returns it. A failed run gives [`Error::RunFailed`](crate::Error::RunFailed), a
    /// cancelled one [`Error::Cancelled`](crate::Error::Cancelled), a deleted one [`Error::NotFound`](crate::Error::NotFound). Completion in this
    /// process is seen at once; other processes' changes by polling the store.
    pub async fn wait_for_run(&self, run_id: &str, options: WaitOptions) -> Result<Run> {
        match self
            .wait_inner(run_id, options, "waitForRun", true, None)
            .await?
        {
            Settled::Run(run) => Ok(*run),
            Settled::Output(_) => self.require_run(run_id).await,
        }
    }

    /// Waits for a run to settle. With `reread_on_complete` false, an in-process `run:complete`
    /// settles with the event's output instead of reading the run again (the latency path of
    /// `trigger_and_wait`).
    async fn wait_inner(
        &self,
        run_id: &str,
        options: WaitOptions,
        name: &str,
        reread_on_complete: bool,
        early: Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>>,
    ) -> Result<Settled> {
        let interval = options
            .polling_interval
            .unwrap_or(self.inner.config.polling_interval);
        if interval.is_zero() {
            return Err(Error::Validation(
                "pollingIntervalMs must be a positive finite number".into(),
            ));
        }
        // `early` carries every event since before the run was created (filtered below).
        let mut live = early.unwrap_or_else(|| self.inner.events.subscribe_run(run_id));
        let deadline = options.timeout.map(|t| runtime::now() + t);
        let timeout_error = || {
            Error::Timeout(format!(
                "{name} timeout after {}ms",
                options.timeout.unwrap_or_default().as_millis()
            ))
        };
        let settle = |run: Option<Run>| -> Option<Result<Settled>> {
            let run = match run {
                None => return Some(Err(Error::run_not_found(run_id))),
                Some(run) => run,
            };
            match run.status {
                RunStatus::Completed => Some(Ok(Settled::Run(Box::new(run)))),
                RunStatus::Failed => Some(Err(Error::RunFailed {
                    run_id: run.id,
                    message: run.error.unwrap_or_else(|| "Run failed".into()),
                })),
                RunStatus::Cancelled => Some(Err(Error::Cancelled { run_id: run.id })),
                _ => None,
            }
        };
        if let Some(done) = settle(self.get_run(run_id).await?) {
            deliver_queued(&mut live, run_id, &options).await;
            return done;
        }
        // Polled every `interval` from the last poll, whatever arrives in between.
        let mut next_poll = runtime::now() + interval;
        loop {
            let sleep_until_deadline = async {
                match deadline {
                    Some(at) => runtime::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = live.recv() => {
                    let Some(event) = event else { continue };
                    if event.kind.run_id() != Some(run_id) {
                        continue;
                    }
                    match &event.kind {
                        EventKind::RunComplete { output, .. } if !reread_on_complete => {
                            let output = (!output.is_null()).then(|| output.clone());
                            return Ok(Settled::Output(output));
                        }
                        EventKind::RunComplete { .. } => {
                            if let Some(done) = settle(self.get_run(run_id).await?) {
                                return done;
                            }
                        }
                        EventKind::RunFail { error, .. } => {
                            return Err(Error::RunFailed { run_id: run_id.to_owned(), message: error.clone() });
                        }
                        EventKind::RunCancel { .. } => {
                            return Err(Error::Cancelled { run_id: run_id.to_owned() });
                        }
                        EventKind::RunDelete { .. } => return Err(Error::run_not_found(run_id)),
                        kind => deliver(kind, &options).await,
                    }
                }
                _ = runtime::sleep_until(next_poll) => {
                    next_poll = runtime::now() + interval;
                    if let Some(done) = settle(self.get_run(run_id).await?) {
                        deliver_queued(&mut live, run_id, &options).await;
                        return done;
                    }
                }
                _ = sleep_until_deadline => return Err(timeout_error()),
            }
        }
    }
}

/// Calls the wait's `on_progress` / `on_log` callback for a live event of its run.
async fn deliver(kind: &EventKind, options: &WaitOptions) {
    match kind {
        EventKind::RunProgress { progress, .. } => {
            if let Some(callback) = &options.on_progress {
                let callback = callback.clone();
                let progress = progress.clone();
                crate::events::call_guarded(async move { callback(&progress) }).await;
            }
        }
        EventKind::LogWrite {
            level,
            message,
            data,
            step_name,
            ..
        } => {
            if let Some(callback) = &options.on_log {
                let callback = callback.clone();
                let entry = LogEntry {
                    level: *level,
                    message: message.clone(),
                    data: data.clone(),
                    step_name: step_name.clone(),
                };
                crate::events::call_guarded(async move { callback(&entry) }).await;
            }
        }
        _ => {}
    }
}

/// A wait settled by reading the store: the events emitted since it subscribed may still be
/// queued (the run can finish before the read runs). Their callbacks are owed: call them first.
async fn deliver_queued(
    live: &mut tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>,
    run_id: &str,
    options: &WaitOptions,
) {
    if options.on_progress.is_none() && options.on_log.is_none() {
        return;
    }
    while let Ok(event) = live.try_recv() {
        if event.kind.run_id() == Some(run_id) {
            deliver(&event.kind, options).await;
        }
    }
}

/// How a wait ended successfully.
enum Settled {
    /// The completed run, as read from the store.
    Run(Box<Run>),
    /// The output carried by the in-process `run:complete` event.
    Output(Option<Value>),
}
