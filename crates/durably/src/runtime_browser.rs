//! The runtime seam (`runtime.rs`) on `wasm32`, for a browser's Web Worker (feature `browser`):
//! tasks are JavaScript promises (`wasm_bindgen_futures::spawn_local`) on the worker's event
//! loop, timers are `setTimeout` (cleared when their future is dropped), the monotonic clock is
//! `performance.now()` and the wall clock `Date.now()` (both through `web-time`). The API is the
//! native file's, item for item, `Send` bounds included, so the engine compiles unchanged.
//!
//! One difference the engine cannot see: a panic aborts the WebAssembly instance (the target has
//! no unwinding), so a task never ends by panicking; it either finishes or is aborted.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{AbortHandle, Abortable};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A point on the monotonic clock the engine's timers use (`performance.now()`).
pub(crate) type Instant = web_time::Instant;

/// Now, on the monotonic clock of [`sleep_until`].
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// The wall clock: milliseconds since the Unix epoch (`Date.now()`; 0 for a clock set before
/// 1970). Leases and run times stored in the database come from it.
pub(crate) fn wall_clock_millis() -> i64 {
    #[cfg(feature = "testing")]
    if let Some((start, at)) = VIRTUAL_WALL_CLOCK.with(std::cell::Cell::get) {
        return start + now().saturating_duration_since(at).as_millis() as i64;
    }
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map(|since| since.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(feature = "testing")]
thread_local! {
    /// The wall clock follows the monotonic clock from a start time (see
    /// [`crate::testing::use_virtual_wall_clock`]).
    static VIRTUAL_WALL_CLOCK: std::cell::Cell<Option<(i64, Instant)>> =
        const { std::cell::Cell::new(None) };
}

/// Makes the wall clock follow the monotonic clock from `start_millis` on.
#[cfg(feature = "testing")]
pub(crate) fn use_virtual_wall_clock(start_millis: i64) {
    VIRTUAL_WALL_CLOCK.with(|clock| clock.set(Some((start_millis, now()))));
}

/// The longest delay `setTimeout` takes (a longer one fires at once); longer sleeps are
/// chained timers.
const MAX_TIMEOUT_MILLIS: u128 = i32::MAX as u128;

/// Completes after `duration`.
pub(crate) async fn sleep(duration: Duration) {
    match now().checked_add(duration) {
        Some(deadline) => sleep_until(deadline).await,
        // Beyond the clock's range: never.
        None => std::future::pending().await,
    }
}

/// Completes at `deadline` (at once when it has passed).
pub(crate) async fn sleep_until(deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return;
        }
        // Rounded up, so that the timer never fires before the deadline.
        let millis = left.as_micros().div_ceil(1000).min(MAX_TIMEOUT_MILLIS) as u32;
        Timer::start(millis).await;
    }
}

thread_local! {
    /// The `setTimeout` timers of [`Timer`]s still waiting, by id. JavaScript callbacks are not
    /// `Send`; the engine's futures must be, so a timer future holds only its id and a channel,
    /// and its callback stays here, on the one thread of the worker.
    static TIMERS: RefCell<HashMap<u64, gloo_timers::callback::Timeout>> =
        RefCell::new(HashMap::new());
    static NEXT_TIMER: Cell<u64> = const { Cell::new(0) };
}

/// One `setTimeout`, cleared when the future is dropped before it fired.
struct Timer {
    id: u64,
    fired: oneshot::Receiver<()>,
}

impl Timer {
    fn start(millis: u32) -> Timer {
        let id = NEXT_TIMER.with(|next| next.replace(next.get() + 1));
        let (fire, fired) = oneshot::channel();
        let timeout = gloo_timers::callback::Timeout::new(millis, move || {
            let _ = fire.send(());
        });
        TIMERS.with(|timers| timers.borrow_mut().insert(id, timeout));
        Timer { id, fired }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A closed channel (the timer gone) counts as fired rather than waiting forever.
        Pin::new(&mut self.fired).poll(cx).map(drop)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // Clears the timeout if it has not fired (dropping a `Timeout` cancels it).
        let _ = TIMERS.try_with(|timers| timers.borrow_mut().remove(&self.id));
    }
}

/// `future`'s output, or `None` when `duration` passed first (`future` is then dropped).
pub(crate) async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures::select_biased! {
        output = future.fuse() => Some(output),
        () = sleep(duration).fuse() => None,
    }
}

/// A spawned task; dropping the handle lets it run on (see [`Task::abort_on_drop`]).
pub(crate) struct Task<T> {
    /// The task's output, or `None` when it was aborted.
    ended: oneshot::Receiver<Option<T>>,
    abort: AbortHandle,
}

/// Runs `future` on its own task, detached (it runs to its end unless the worker stops).
pub(crate) fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    wasm_bindgen_futures::spawn_local(future);
}

/// Runs `future` on its own task inside `span`.
pub(crate) fn spawn_in<T, F>(span: tracing::Span, future: F) -> Task<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (abort, registration) = AbortHandle::new_pair();
    let (report, ended) = oneshot::channel();
    let future = Abortable::new(future.instrument(span), registration);
    wasm_bindgen_futures::spawn_local(async move {
        let _ = report.send(future.await.ok());
    });
    Task { ended, abort }
}

impl<T> Task<T> {
    /// Waits for the task, at most `grace` when given; a task still running then is aborted.
    /// `true` when it finished by itself.
    pub(crate) async fn join_within(mut self, grace: Option<Duration>) -> bool {
        let joined = match grace {
            None => Some((&mut self.ended).await),
            Some(grace) => timeout(grace, &mut self.ended).await,
        };
        match joined {
            Some(_) => true,
            None => {
                // Aborted, the task drops its future the next time it is polled (at once:
                // aborting wakes it), and reports that.
                self.abort.abort();
                let _ = self.ended.await;
                false
            }
        }
    }

    /// Turns the handle into a guard that aborts the task when dropped.
    pub(crate) fn abort_on_drop(self) -> AbortOnDrop<T> {
        AbortOnDrop(self.abort, std::marker::PhantomData)
    }
}

/// Aborts a task when dropped (a lease keeper must not outlive its execution).
pub(crate) struct AbortOnDrop<T>(AbortHandle, std::marker::PhantomData<fn() -> T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a slot task ended: its result, or `None` when it was aborted.
pub(crate) type Ended<T> = Option<T>;

/// The tasks of a worker's slots: spawned, counted, and joined as they end. Dropping the set
/// aborts the tasks still running (as tokio's `JoinSet` does).
pub(crate) struct Slots<T> {
    /// Slots taken: tasks running, or ended and not joined yet.
    taken: usize,
    sender: mpsc::UnboundedSender<Ended<T>>,
    ended: mpsc::UnboundedReceiver<Ended<T>>,
    dropped: CancellationToken,
}

impl<T: Send + 'static> Slots<T> {
    pub(crate) fn new() -> Self {
        let (sender, ended) = mpsc::unbounded_channel();
        Slots {
            taken: 0,
            sender,
            ended,
            dropped: CancellationToken::new(),
        }
    }

    /// Starts `future` in a slot of its own.
    pub(crate) fn spawn(&mut self, future: impl Future<Output = T> + Send + 'static) {
        self.taken += 1;
        let sender = self.sender.clone();
        let dropped = self.dropped.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let ended = futures::select_biased! {
                () = dropped.cancelled().fuse() => None,
                output = future.fuse() => Some(output),
            };
            let _ = sender.send(ended);
        });
    }

    /// Slots taken, including tasks that ended but were not joined yet.
    pub(crate) fn len(&self) -> usize {
        self.taken
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.taken == 0
    }

    /// A slot that has ended, if any, without waiting.
    pub(crate) fn try_join_next(&mut self) -> Option<Ended<T>> {
        let ended = self.ended.try_recv().ok()?;
        self.taken -= 1;
        Some(ended)
    }

    /// The next slot to end (`None` when there are none).
    pub(crate) async fn join_next(&mut self) -> Option<Ended<T>> {
        if self.taken == 0 {
            return None;
        }
        // The set holds a sender itself, so the channel stays open while tasks run.
        let ended = self.ended.recv().await?;
        self.taken -= 1;
        Some(ended)
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}
