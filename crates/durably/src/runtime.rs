//! The only door of the library's core (the engine, the step context and lease clock, waits,
//! event streams and listeners) to the async runtime: spawning tasks, a set of slot tasks, timers,
//! the monotonic clock and the wall clock. Everything else in the engine is plain futures and
//! runtime-agnostic channels (`tokio::sync`, `tokio_util`'s cancellation token), so running
//! the engine elsewhere (a browser's Web Worker, where tasks are `spawn_local` and time comes
//! from `performance.now()`) means another implementation of this file, not of the engine.
//!
//! Native: tokio (`runtime_browser.rs` is the other implementation, on wasm32). Timers use
//! tokio's clock, so tests that pause time (`tokio::time::pause`) control the engine's timers
//! too.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument;

/// A point on the monotonic clock the engine's timers use.
pub(crate) type Instant = tokio::time::Instant;

/// Now, on the monotonic clock of [`sleep_until`].
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// The wall clock: milliseconds since the Unix epoch (what `Timestamp::now` reads; 0 for a
/// clock set before 1970). Leases and run times stored in the database come from it.
pub(crate) fn wall_clock_millis() -> i64 {
    #[cfg(feature = "testing")]
    if let Some((start, at)) = VIRTUAL_WALL_CLOCK.with(std::cell::Cell::get) {
        return start + now().saturating_duration_since(at).as_millis() as i64;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(feature = "testing")]
thread_local! {
    /// On this thread, the wall clock follows the monotonic clock from a start time (see
    /// [`crate::testing::use_virtual_wall_clock`]).
    static VIRTUAL_WALL_CLOCK: std::cell::Cell<Option<(i64, Instant)>> =
        const { std::cell::Cell::new(None) };
}

/// Makes the wall clock of this thread follow the monotonic clock from `start_millis` on.
#[cfg(feature = "testing")]
pub(crate) fn use_virtual_wall_clock(start_millis: i64) {
    VIRTUAL_WALL_CLOCK.with(|clock| clock.set(Some((start_millis, now()))));
}

/// Completes after `duration`.
pub(crate) async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await
}

/// Completes at `deadline` (at once when it has passed).
pub(crate) async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline).await
}

/// `future`'s output, or `None` when `duration` passed first (`future` is then dropped).
pub(crate) async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(duration, future).await.ok()
}

/// A spawned task; dropping the handle lets it run on (see [`Task::abort_on_drop`]).
pub(crate) struct Task<T> {
    handle: tokio::task::JoinHandle<T>,
}

/// Runs `future` on its own task, detached (it runs to its end unless the runtime stops).
pub(crate) fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    drop(tokio::spawn(future));
}

/// Spawns from code that may run outside the runtime (an OpenTelemetry meter's callback, on
/// its exporter's own thread): the runtime of the calling code if any, else the one captured
/// when the spawner was made.
#[cfg(feature = "otel")]
pub(crate) struct Spawner(Option<tokio::runtime::Handle>);

#[cfg(feature = "otel")]
impl Spawner {
    /// A spawner onto the runtime running now, if any.
    pub(crate) fn capture() -> Self {
        Spawner(tokio::runtime::Handle::try_current().ok())
    }

    /// Runs `future` on its own task, detached; `false` when no runtime was at hand.
    pub(crate) fn spawn<F>(&self, future: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.0.clone())
        {
            Some(runtime) => {
                drop(runtime.spawn(future));
                true
            }
            None => false,
        }
    }
}

/// Runs `future` on its own task inside `span`.
pub(crate) fn spawn_in<T, F>(span: tracing::Span, future: F) -> Task<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    Task {
        handle: tokio::spawn(future.instrument(span)),
    }
}

impl<T> Task<T> {
    /// Waits for the task, at most `grace` when given; a task still running then is aborted.
    /// `true` when it finished by itself (a panic is logged and counts as finished).
    pub(crate) async fn join_within(mut self, grace: Option<Duration>) -> bool {
        let joined = match grace {
            None => Some((&mut self.handle).await),
            Some(grace) => tokio::time::timeout(grace, &mut self.handle).await.ok(),
        };
        match joined {
            Some(Err(error)) if !error.is_cancelled() => {
                tracing::error!(%error, "durably worker task ended abnormally");
                true
            }
            Some(_) => true,
            None => {
                self.handle.abort();
                let _ = self.handle.await;
                false
            }
        }
    }

    /// Turns the handle into a guard that aborts the task when dropped.
    pub(crate) fn abort_on_drop(self) -> AbortOnDrop<T> {
        AbortOnDrop(self.handle)
    }
}

/// Aborts a task when dropped (a lease keeper must not outlive its execution).
pub(crate) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a slot task ended: its result, or `None` when it panicked or was aborted.
pub(crate) type Ended<T> = Option<T>;

/// The tasks of a worker's slots: spawned, counted, and joined as they end.
pub(crate) struct Slots<T> {
    set: tokio::task::JoinSet<T>,
}

impl<T: Send + 'static> Slots<T> {
    pub(crate) fn new() -> Self {
        Slots {
            set: tokio::task::JoinSet::new(),
        }
    }

    /// Starts `future` in a slot of its own.
    pub(crate) fn spawn(&mut self, future: impl Future<Output = T> + Send + 'static) {
        self.set.spawn(future);
    }

    /// Slots taken, including tasks that ended but were not joined yet.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// A slot that has ended, if any, without waiting.
    pub(crate) fn try_join_next(&mut self) -> Option<Ended<T>> {
        self.set.try_join_next().map(Result::ok)
    }

    /// The next slot to end (`None` when there are none).
    pub(crate) async fn join_next(&mut self) -> Option<Ended<T>> {
        self.set.join_next().await.map(Result::ok)
    }
}
