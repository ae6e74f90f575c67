//! SSE framing (`data: <json>\n\n`, nothing else), per-run progress throttling, optional
//! keep-alive comments, and the slim event projection of `/runs/subscribe`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{FutureExt, Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventKind};
use crate::run::{Labels, LogLevel, Progress};

/// How the throttle treats an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `run:progress`: throttled per run.
    Progress,
    /// `run:complete|fail|cancel|delete`: flushes and forgets the run's throttle state.
    Terminal,
    /// Anything else: flushes the run's held-back progress first (SPEC §3 #13).
    Other,
}

/// One event ready for the wire.
pub(crate) struct Item {
    run_id: Option<String>,
    class: Class,
    frame: Bytes,
}

impl Item {
    /// Frames `payload` as `data: <json>\n\n`; `None` if it cannot be serialized.
    pub(crate) fn new(kind: &EventKind, payload: &impl Serialize) -> Option<Item> {
        let json = match serde_json::to_string(payload) {
            Ok(json) => json,
            Err(error) => {
                tracing::warn!(%error, "could not serialize an SSE event; skipped");
                return None;
            }
        };
        let class = match kind {
            EventKind::RunProgress { .. } => Class::Progress,
            EventKind::RunComplete { .. }
            | EventKind::RunFail { .. }
            | EventKind::RunCancel { .. }
            | EventKind::RunDelete { .. } => Class::Terminal,
            _ => Class::Other,
        };
        Some(Item {
            run_id: kind.run_id().map(str::to_owned),
            class,
            frame: Bytes::from(format!("data: {json}\n\n")),
        })
    }

    /// A full event (`/subscribe`).
    pub(crate) fn full(event: &Event) -> Option<Item> {
        Item::new(&event.kind, event)
    }

    /// The slim projection of `/runs/subscribe`; `None` for types not forwarded there.
    pub(crate) fn slim(event: &Event) -> Option<Item> {
        let slim = Slim::of(&event.kind)?;
        Item::new(&event.kind, &slim)
    }
}

/// The payloads of `/runs/subscribe` (upstream §8.2 table; no timestamp or sequence).
#[derive(Serialize)]
#[serde(tag = "type")]
enum Slim<'a> {
    #[serde(rename = "run:trigger", rename_all = "camelCase")]
    RunTrigger {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:coalesced", rename_all = "camelCase")]
    RunCoalesced {
        run_id: &'a str,
        job_name: &'a str,
        status: crate::run::RunStatus,
        labels: &'a Labels,
        skipped_input: &'a serde_json::Value,
        skipped_labels: &'a Labels,
    },
    #[serde(rename = "run:waiting", rename_all = "camelCase")]
    RunWaiting {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
        wait_id: &'a str,
    },
    #[serde(rename = "run:leased", rename_all = "camelCase")]
    RunLeased {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:complete", rename_all = "camelCase")]
    RunComplete {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:fail", rename_all = "camelCase")]
    RunFail {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:cancel", rename_all = "camelCase")]
    RunCancel {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:delete", rename_all = "camelCase")]
    RunDelete {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "run:progress", rename_all = "camelCase")]
    RunProgress {
        run_id: &'a str,
        job_name: &'a str,
        progress: &'a Progress,
        labels: &'a Labels,
    },
    #[serde(rename = "step:start", rename_all = "camelCase")]
    StepStart {
        run_id: &'a str,
        job_name: &'a str,
        step_name: &'a str,
        step_index: i64,
        labels: &'a Labels,
    },
    #[serde(rename = "step:complete", rename_all = "camelCase")]
    StepComplete {
        run_id: &'a str,
        job_name: &'a str,
        step_name: &'a str,
        step_index: i64,
        labels: &'a Labels,
    },
    #[serde(rename = "step:fail", rename_all = "camelCase")]
    StepFail {
        run_id: &'a str,
        job_name: &'a str,
        step_name: &'a str,
        step_index: i64,
        error: &'a str,
        labels: &'a Labels,
    },
    #[serde(rename = "step:cancel", rename_all = "camelCase")]
    StepCancel {
        run_id: &'a str,
        job_name: &'a str,
        step_name: &'a str,
        step_index: i64,
        labels: &'a Labels,
    },
    #[serde(rename = "log:write", rename_all = "camelCase")]
    LogWrite {
        run_id: &'a str,
        job_name: &'a str,
        labels: &'a Labels,
        step_name: &'a Option<String>,
        level: LogLevel,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: &'a Option<serde_json::Value>,
    },
}

impl<'a> Slim<'a> {
    fn of(kind: &'a EventKind) -> Option<Slim<'a>> {
        Some(match kind {
            EventKind::RunTrigger {
                run_id,
                job_name,
                labels,
                ..
            } => Slim::RunTrigger {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunCoalesced {
                run_id,
                job_name,
                status,
                labels,
                skipped_input,
                skipped_labels,
            } => Slim::RunCoalesced {
                run_id,
                job_name,
                status: *status,
                labels,
                skipped_input,
                skipped_labels,
            },
            EventKind::RunWaiting {
                run_id,
                job_name,
                labels,
                wait_id,
            } => Slim::RunWaiting {
                run_id,
                job_name,
                labels,
                wait_id,
            },
            EventKind::RunLeased {
                run_id,
                job_name,
                labels,
                ..
            } => Slim::RunLeased {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunComplete {
                run_id,
                job_name,
                labels,
                ..
            } => Slim::RunComplete {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunFail {
                run_id,
                job_name,
                labels,
                ..
            } => Slim::RunFail {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunCancel {
                run_id,
                job_name,
                labels,
            } => Slim::RunCancel {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunDelete {
                run_id,
                job_name,
                labels,
            } => Slim::RunDelete {
                run_id,
                job_name,
                labels,
            },
            EventKind::RunProgress {
                run_id,
                job_name,
                progress,
                labels,
            } => Slim::RunProgress {
                run_id,
                job_name,
                progress,
                labels,
            },
            EventKind::StepStart {
                run_id,
                job_name,
                step_name,
                step_index,
                labels,
            } => Slim::StepStart {
                run_id,
                job_name,
                step_name,
                step_index: *step_index,
                labels,
            },
            EventKind::StepComplete {
                run_id,
                job_name,
                step_name,
                step_index,
                labels,
                ..
            } => Slim::StepComplete {
                run_id,
                job_name,
                step_name,
                step_index: *step_index,
                labels,
            },
            EventKind::StepFail {
                error,
                run_id,
                job_name,
                step_name,
                step_index,
                labels,
            } => Slim::StepFail {
                run_id,
                job_name,
                step_name,
                step_index: *step_index,
                error,
                labels,
            },
            EventKind::StepCancel {
                run_id,
                job_name,
                step_name,
                step_index,
                labels,
            } => Slim::StepCancel {
                run_id,
                job_name,
                step_name,
                step_index: *step_index,
                labels,
            },
            EventKind::LogWrite {
                run_id,
                job_name,
                labels,
                step_name,
                level,
                message,
                data,
            } => Slim::LogWrite {
                run_id,
                job_name,
                labels,
                step_name,
                level: *level,
                message,
                data,
            },
            EventKind::RunLeaseRenewed { .. } | EventKind::WorkerError { .. } => return None,
        })
    }
}

/// Stream settings shared by both SSE routes.
#[derive(Clone)]
pub(crate) struct StreamOptions {
    pub(crate) throttle: Duration,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) shutdown: CancellationToken,
}

#[derive(Default)]
struct RunThrottle {
    last_sent: Option<Instant>,
    pending: Option<(u64, Bytes)>,
}

type Source = Pin<Box<dyn Stream<Item = Item> + Send>>;

/// The throttling state machine behind one SSE response.
struct Throttled {
    source: Source,
    options: StreamOptions,
    runs: HashMap<String, RunThrottle>,
    out: VecDeque<Bytes>,
    keep_alive: Option<tokio::time::Interval>,
    arrivals: u64,
    finished: bool,
}

impl Throttled {
    fn new(source: Source, options: StreamOptions) -> Self {
        let keep_alive = options.keep_alive.filter(|d| !d.is_zero()).map(|every| {
            let mut interval = tokio::time::interval_at(Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        Throttled {
            source,
            options,
            runs: HashMap::new(),
            out: VecDeque::new(),
            keep_alive,
            arrivals: 0,
            finished: false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let throttle = self.options.throttle;
        self.runs
            .values()
            .filter(|run| run.pending.is_some())
            .filter_map(|run| run.last_sent.map(|at| at + throttle))
            .min()
    }

    fn accept(&mut self, item: Item, now: Instant) {
        self.arrivals += 1;
        let throttle = self.options.throttle;
        let Some(run_id) = item.run_id.filter(|_| !throttle.is_zero()) else {
            self.out.push_back(item.frame);
            return;
        };
        match item.class {
            Class::Progress => {
                let state = self.runs.entry(run_id).or_default();
                let due = state
                    .last_sent
                    .is_none_or(|at| now.duration_since(at) >= throttle);
                if due {
                    state.last_sent = Some(now);
                    state.pending = None;
                    self.out.push_back(item.frame);
                } else {
                    state.pending = Some((self.arrivals, item.frame));
                }
            }
            Class::Terminal => {
                if let Some(state) = self.runs.remove(&run_id)
                    && let Some((_, frame)) = state.pending
                {
                    self.out.push_back(frame);
                }
                self.out.push_back(item.frame);
            }
            Class::Other => {
                if let Some(state) = self.runs.get_mut(&run_id)
                    && let Some((_, frame)) = state.pending.take()
                {
                    state.last_sent = Some(now);
                    self.out.push_back(frame);
                }
                self.out.push_back(item.frame);
            }
        }
    }

    fn flush_due(&mut self, now: Instant) {
        let throttle = self.options.throttle;
        let mut due: Vec<(u64, Bytes)> = Vec::new();
        for state in self.runs.values_mut() {
            let ready = state.last_sent.is_none_or(|at| now >= at + throttle);
            if ready && let Some(pending) = state.pending.take() {
                state.last_sent = Some(now);
                due.push(pending);
            }
        }
        due.sort_by_key(|(order, _)| *order);
        self.out.extend(due.into_iter().map(|(_, frame)| frame));
    }

    fn flush_all(&mut self) {
        let mut due: Vec<(u64, Bytes)> = self
            .runs
            .drain()
            .filter_map(|(_, state)| state.pending)
            .collect();
        due.sort_by_key(|(order, _)| *order);
        self.out.extend(due.into_iter().map(|(_, frame)| frame));
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            let deadline = self.next_deadline();
            let keep_alive = &mut self.keep_alive;
            let tick = async {
                match keep_alive {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            enum Wake {
                Shutdown,
                Item(Option<Item>),
                Timer,
                KeepAlive,
            }
            let wake = tokio::select! {
                biased;
                _ = self.options.shutdown.cancelled() => Wake::Shutdown,
                item = self.source.next() => Wake::Item(item),
                _ = timer => Wake::Timer,
                _ = tick => Wake::KeepAlive,
            };
            match wake {
                Wake::Shutdown => {
                    // deliver what already arrived, then end
                    while let Some(Some(item)) = self.source.next().now_or_never() {
                        self.accept(item, Instant::now());
                    }
                    self.flush_all();
                    self.finished = true;
                }
                Wake::Item(None) => {
                    self.flush_all();
                    self.finished = true;
                }
                Wake::Item(Some(item)) => self.accept(item, Instant::now()),
                Wake::Timer => self.flush_due(Instant::now()),
                Wake::KeepAlive => self.out.push_back(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

impl Drop for Throttled {
    fn drop(&mut self) {
        tracing::debug!(finished = self.finished, "SSE stream closed");
    }
}

/// A `text/event-stream` response over `source`. Dropping the response body (client gone)
/// drops `source` and with it the durably subscription.
pub(crate) fn response(
    source: impl Stream<Item = Item> + Send + 'static,
    options: StreamOptions,
) -> Response {
    let state = Throttled::new(Box::pin(source), options);
    let frames = futures::stream::unfold(state, |mut state| async move {
        let frame = state.next().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), state))
    });
    let mut response = Response::new(Body::from_stream(frames));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // `no-transform`: compression middleware must not buffer the stream (upstream v4).
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
}

#[cfg(test)]
mod tests {
    //! The throttle against upstream's sse.shared cases (UPSTREAM §9, §13) plus SPEC §3 #13.

    use std::time::Duration;

    use futures::channel::mpsc;
    use serde_json::Value;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::{Item, StreamOptions, Throttled};
    use crate::events::{Event, EventKind};
    use crate::run::{Labels, Progress};
    use crate::time::Timestamp;

    fn event(kind: EventKind) -> Item {
        Item::full(&Event {
            kind,
            timestamp: Timestamp::now(),
            sequence: 1,
        })
        .expect("serializable")
    }

    fn progress(run: &str, current: u64) -> Item {
        event(EventKind::RunProgress {
            run_id: run.into(),
            job_name: "job".into(),
            progress: Progress {
                current,
                total: None,
                message: None,
            },
            labels: Labels::new(),
        })
    }

    fn step_start(run: &str) -> Item {
        event(EventKind::StepStart {
            run_id: run.into(),
            job_name: "job".into(),
            step_name: "s".into(),
            step_index: 0,
            labels: Labels::new(),
        })
    }

    fn complete(run: &str) -> Item {
        event(EventKind::RunComplete {
            run_id: run.into(),
            job_name: "job".into(),
            output: Value::Null,
            duration: 0,
            labels: Labels::new(),
        })
    }

    /// `"p<current>"` for progress, else the event type, plus `@<ms since start>`.
    fn describe(frame: &[u8], started: Instant) -> String {
        let text = std::str::from_utf8(frame).expect("utf-8");
        let json: Value = serde_json::from_str(
            text.strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .expect("data frame"),
        )
        .expect("json");
        let what = match json["type"].as_str() {
            Some("run:progress") => format!(
                "{}{}",
                json["runId"].as_str().unwrap_or(""),
                json["progress"]["current"]
            ),
            Some(other) => format!("{}{}", json["runId"].as_str().unwrap_or(""), other),
            None => "?".into(),
        };
        format!("{what}@{}", started.elapsed().as_millis())
    }

    struct Harness {
        sender: mpsc::UnboundedSender<Item>,
        throttled: Throttled,
        shutdown: CancellationToken,
        started: Instant,
    }

    impl Harness {
        fn new(throttle_ms: u64) -> Harness {
            let (sender, receiver) = mpsc::unbounded();
            let shutdown = CancellationToken::new();
            let throttled = Throttled::new(
                Box::pin(receiver),
                StreamOptions {
                    throttle: Duration::from_millis(throttle_ms),
                    keep_alive: None,
                    shutdown: shutdown.clone(),
                },
            );
            Harness {
                sender,
                throttled,
                shutdown,
                started: Instant::now(),
            }
        }

        fn send(&self, items: impl IntoIterator<Item = Item>) {
            for item in items {
                self.sender.unbounded_send(item).expect("open");
            }
        }

        /// The next `n` frames.
        async fn take(&mut self, n: usize) -> Vec<String> {
            let mut out = Vec::new();
            for _ in 0..n {
                let frame = self.throttled.next().await.expect("a frame");
                out.push(describe(&frame, self.started));
            }
            out
        }

        /// Frames until the stream ends.
        async fn rest(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Some(frame) = self.throttled.next().await {
                out.push(describe(&frame, self.started));
            }
            out
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_progress_is_immediate_and_the_latest_follows_after_the_window() {
        let mut h = Harness::new(100);
        h.send([
            progress("a", 1),
            progress("a", 2),
            progress("a", 3),
            progress("a", 4),
        ]);
        assert_eq!(h.take(2).await, vec!["a1@0", "a4@100"]);
        // after the window a new progress is immediate again
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.send([progress("a", 5)]);
        assert_eq!(h.take(1).await, vec!["a5@250"]);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_are_throttled_independently() {
        let mut h = Harness::new(100);
        h.send([
            progress("a", 1),
            progress("b", 1),
            progress("a", 2),
            progress("b", 2),
        ]);
        assert_eq!(h.take(4).await, vec!["a1@0", "b1@0", "a2@100", "b2@100"]);
    }

    #[tokio::test(start_paused = true)]
    async fn other_events_pass_at_once_and_flush_the_runs_held_back_progress_first() {
        let mut h = Harness::new(100);
        h.send([
            progress("a", 1),
            progress("a", 2),
            step_start("b"),
            step_start("a"),
        ]);
        // SPEC §3 #13: a2 goes out before a's later step:start (upstream sent it after)
        assert_eq!(
            h.take(4).await,
            vec!["a1@0", "bstep:start@0", "a2@0", "astep:start@0"]
        );
        // a2 counted as sent: the next progress within the window is held back
        h.send([progress("a", 3)]);
        assert_eq!(h.take(1).await, vec!["a3@100"]);
    }

    #[tokio::test(start_paused = true)]
    async fn terminal_events_flush_and_reset_the_run() {
        let mut h = Harness::new(100);
        h.send([
            progress("a", 1),
            progress("a", 9),
            complete("a"),
            progress("a", 10),
        ]);
        assert_eq!(
            h.take(4).await,
            vec!["a1@0", "a9@0", "arun:complete@0", "a10@0"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_source_flushes_held_back_progress() {
        let mut h = Harness::new(100);
        h.send([progress("a", 1), progress("a", 5)]);
        h.sender.close_channel();
        assert_eq!(h.rest().await, vec!["a1@0", "a5@0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_and_ends_the_stream() {
        let mut h = Harness::new(100);
        h.send([progress("a", 1), progress("a", 2)]);
        assert_eq!(h.take(1).await, vec!["a1@0"]);
        h.shutdown.cancel();
        assert_eq!(h.rest().await, vec!["a2@0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_disables_throttling() {
        let mut h = Harness::new(0);
        h.send((1..=5).map(|i| progress("a", i)));
        h.sender.close_channel();
        assert_eq!(h.rest().await, vec!["a1@0", "a2@0", "a3@0", "a4@0", "a5@0"]);
    }
}
