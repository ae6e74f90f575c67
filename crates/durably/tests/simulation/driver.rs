//! One schedule: for a seed, N workers (each behind its own `FaultyStore`) share a
//! `MemoryStore` on one thread in virtual time; M runs are triggered, some with keys, some
//! cancelled; the simulation runs until every run is terminal (or a virtual bound passes).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durably::testing::sim::{FAULT_MARKER, FaultCounts, FaultRates, FaultyStore};
use durably::testing::{MemoryStore, use_seeded_ids, use_virtual_wall_clock};
use durably::{
    Coalesce, DurableWait, Durably, Error, Job, JobHandle, NewWait, Run, RunFilter, RunStatus,
    SignalDisposition, StepContext, Store, Timestamp, TriggerOptions, Tuning, WaitResult,
    WaitStatus,
};

use super::probe::{Event, Probe, START, Side, Trace, at, worker_id};

/// The job's name.
const JOB: &str = "sim";
/// A step's closure fails on purpose for inputs divisible by this (at its second step).
pub const FAIL_EVERY: u64 = 13;
/// The error of that failure.
pub const DELIBERATE: &str = "deliberate failure";
/// How long a schedule may take in virtual time before its runs count as stuck.
const BOUND: Duration = Duration::from_secs(600);
/// Inputs from here on are runs that wait: `WAITS + timeout_s * 1000 + base` (`timeout_s` 0:
/// a wait without a deadline).
pub const WAITS: u64 = 1_000_000;
/// The name of the one wait of a waiting run.
pub const WAIT_NAME: &str = "w";

/// An input's base value and, for a run that waits, its wait's timeout in seconds (0: none).
pub fn decode(input: u64) -> (u64, Option<u64>) {
    match input.checked_sub(WAITS) {
        Some(rest) => (rest % 1000, Some(rest / 1000)),
        None => (input, None),
    }
}

/// Whether a run of `input` fails on purpose (at its second step).
pub fn fails_on_purpose(input: u64, steps: usize) -> bool {
    let (base, wait) = decode(input);
    base.is_multiple_of(FAIL_EVERY) && (wait.is_some() || steps >= 2)
}

/// The output of a run that waits, from its wait's result (`None`: a timeout).
pub fn expected_wait_output(input: u64, payload: Option<u64>) -> u64 {
    let (base, _) = decode(input);
    (0..2)
        .fold(base, step_value)
        .wrapping_add(payload.unwrap_or(0))
}

/// What a seed draws: the shape of one schedule.
#[derive(Clone, Debug)]
pub struct Plan {
    pub workers: usize,
    pub runs: usize,
    pub steps: usize,
    pub lease: Duration,
    pub renew: Duration,
    pub poll: Duration,
    pub slots: usize,
    pub hand_off: bool,
    pub claim_ahead_below: Duration,
    pub rates: Vec<FaultRates>,
    /// Runs that wait, in tenths.
    pub wait_share: u8,
}

impl Plan {
    fn draw(rng: &mut fastrand::Rng) -> Plan {
        let workers = rng.usize(2..=4);
        let lease = Duration::from_millis(rng.u64(2..=10) * 500);
        let renew = lease / rng.u32(3..=4);
        let rates = (0..workers)
            .map(|_| match rng.u8(0..5) {
                0 => FaultRates::none(),
                _ => FaultRates::none()
                    .fail_before(rng.f64() * 0.04)
                    .lose_reply(rng.f64() * 0.03)
                    .delay(rng.f64() * 0.10, lease / 2)
                    .freeze(rng.f64() * 0.02, lease / 2, lease * 2),
            })
            .collect();
        Plan {
            workers,
            runs: rng.usize(3..=8),
            steps: rng.usize(2..=4),
            lease,
            renew,
            poll: Duration::from_millis(rng.u64(2..=10) * 100),
            slots: rng.usize(1..=3),
            hand_off: rng.bool(),
            claim_ahead_below: match rng.u8(0..3) {
                0 => Duration::ZERO,
                1 => Duration::from_millis(100),
                _ => lease / 2,
            },
            rates,
            wait_share: rng.u8(0..=5),
        }
    }

    /// The longest a call may be held by a fault.
    fn longest_hold(&self) -> Duration {
        self.lease * 2
    }
}

/// The output a run of `input` completes with (its steps' values folded).
pub fn expected_output(input: u64, steps: usize) -> u64 {
    (0..steps as u64).fold(decode(input).0, step_value)
}

fn step_value(value: u64, index: u64) -> u64 {
    value.wrapping_mul(3).wrapping_add(index + 1)
}

/// What one schedule did.
pub struct Outcome {
    pub seed: u64,
    pub plan: Plan,
    pub trace: Vec<Event>,
    /// The store's runs at the end.
    pub runs: Vec<Run>,
    pub faults: FaultCounts,
    /// Virtual time the schedule took until every run was terminal (or the bound).
    pub settled_after: Duration,
    /// Runs not terminal when the bound passed.
    pub stuck: Vec<String>,
    /// Every run's waits at the end.
    pub waits: Vec<DurableWait>,
}

impl Outcome {
    /// A hash of the whole trace and final state: the same seed must give the same.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.trace.hash(&mut hasher);
        for run in &self.runs {
            format!("{run:?}").hash(&mut hasher);
        }
        format!("{:?}", self.faults).hash(&mut hasher);
        hasher.finish()
    }
}

/// Runs the schedule of `seed` on a fresh current-thread runtime with paused time.
pub fn simulate(seed: u64) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(schedule(seed))
}

/// A closure's duration and whether it watches its token, drawn in execution order.
struct Closures(Mutex<fastrand::Rng>);

impl Closures {
    fn next(&self, lease: Duration) -> (Duration, bool) {
        let mut rng = self.0.lock().unwrap();
        let duration = match rng.u8(0..20) {
            0..14 => Duration::from_millis(rng.u64(0..=50)),
            14..19 => Duration::from_millis(rng.u64(50..=lease.as_millis() as u64 / 2)),
            _ => Duration::from_millis(
                rng.u64(lease.as_millis() as u64..=lease.as_millis() as u64 * 2),
            ),
        };
        (duration, rng.bool())
    }
}

fn job(
    worker: usize,
    steps: usize,
    lease: Duration,
    trace: Trace,
    closures: Arc<Closures>,
) -> Job<u64, u64> {
    Job::new(JOB, move |step: StepContext, input: u64| {
        let (trace, closures) = (trace.clone(), closures.clone());
        async move {
            let (base, wait) = decode(input);
            let mut value = base;
            let steps = if wait.is_some() { 2 } else { steps };
            let mut payload = None;
            for index in 0..steps as u64 {
                if let (1, Some(timeout_s)) = (index, wait) {
                    // A run that waits: between its two steps.
                    let mut new_wait = NewWait::new(WAIT_NAME);
                    if timeout_s > 0 {
                        new_wait = new_wait.timeout(Duration::from_secs(timeout_s));
                    }
                    let prepared = step.prepare_wait(new_wait).await?;
                    let result = step.wait_for(&prepared).await?;
                    payload = match result {
                        WaitResult::Signal { payload } => Some(payload.as_u64().unwrap_or(0)),
                        _ => None,
                    };
                    trace.push(Event::WaitReturned {
                        worker,
                        run: step.run_id().to_owned(),
                        wait: prepared.id.clone(),
                        payload,
                        at: at(),
                    });
                }
                let name = format!("s{index}");
                let (trace, closures) = (trace.clone(), closures.clone());
                let run_id = step.run_id().to_owned();
                value = step
                    .run(&name, |token| {
                        let name = name.clone();
                        async move {
                            trace.push(Event::StepStarted {
                                worker,
                                run: run_id,
                                step: name,
                                at: at(),
                            });
                            let (duration, watches) = closures.next(lease);
                            if watches {
                                tokio::select! {
                                    biased;
                                    _ = token.cancelled() => return Err("stopped".into()),
                                    _ = tokio::time::sleep(duration) => {}
                                }
                            } else {
                                tokio::time::sleep(duration).await;
                            }
                            if index == 1 && base.is_multiple_of(FAIL_EVERY) {
                                return Err::<u64, Box<dyn std::error::Error + Send + Sync>>(
                                    DELIBERATE.into(),
                                );
                            }
                            Ok(step_value(value, index))
                        }
                    })
                    .await?;
                // Progress and a log: more fenced writes (their failures do not matter).
                let _ = step.progress(index + 1, Some(steps as u64), None).await;
                if index == 0 {
                    let _ = step.log().info("first step done", None).await;
                }
            }
            Ok(value.wrapping_add(payload.unwrap_or(0)))
        }
    })
}

/// A run to trigger: when, on which worker, with what.
struct Trigger {
    after: Duration,
    worker: usize,
    input: u64,
    options: TriggerOptions,
    /// Retried until it answers (it has an idempotency key, so retrying is safe).
    retry: bool,
    /// Cancelled this long after it was triggered, by this worker.
    cancel: Option<(Duration, usize)>,
    /// For a run that waits: signalled this long after it was triggered.
    signal: Option<Signal>,
}

/// A signaller's plan for one run's wait.
#[derive(Clone, Debug)]
struct Signal {
    after: Duration,
    worker: usize,
    payload: u64,
    /// The same signal again this long after it was answered (must be a duplicate).
    again: Option<Duration>,
    /// Another signal (another id, another payload) this long after (refused once resolved).
    other: Option<Duration>,
}

async fn schedule(seed: u64) -> Outcome {
    use_virtual_wall_clock(Timestamp::from_millis(START));
    use_seeded_ids(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan = Plan::draw(&mut rng);
    let trace = Trace::default();
    let memory = MemoryStore::new();
    memory.migrate().await.expect("migrate");
    let shared: Arc<dyn Store> = Arc::new(memory.clone());
    let closures = Arc::new(Closures(Mutex::new(fastrand::Rng::with_seed(
        seed ^ 0x5eed_c105,
    ))));

    let mut faulty = Vec::new();
    let mut workers = Vec::new();
    let mut handles: Vec<JobHandle<u64, u64>> = Vec::new();
    for worker in 0..plan.workers {
        let below = Arc::new(Probe::new(
            shared.clone(),
            Side::Store,
            worker,
            trace.clone(),
        ));
        let store = FaultyStore::new(below, rng.u64(..), plan.rates[worker].clone());
        faulty.push(store.clone());
        let above = Arc::new(Probe::new(
            Arc::new(store),
            Side::Engine,
            worker,
            trace.clone(),
        ));
        let durably = Durably::builder()
            .shared_store(above)
            .polling_interval(plan.poll)
            .lease_duration(plan.lease)
            .lease_renew_interval(plan.renew)
            .max_concurrent_runs(plan.slots)
            .tuning(
                Tuning::new()
                    .trigger_hand_off(plan.hand_off)
                    .claim_ahead_below(plan.claim_ahead_below),
            )
            .build()
            .expect("build");
        let handle = durably
            .register(job(
                worker,
                plan.steps,
                plan.lease,
                trace.clone(),
                closures.clone(),
            ))
            .expect("register");
        durably.start_as(worker_id(worker));
        workers.push(durably);
        handles.push(handle);
    }

    let triggers: Vec<Trigger> = (0..plan.runs)
        .map(|i| {
            let mut options = TriggerOptions::new();
            let idempotent = rng.u8(0..10) < 3;
            if idempotent {
                // Sometimes the same key twice: the second trigger returns the first run.
                options = options.idempotency_key(format!("i{}", rng.usize(0..=i)));
            }
            if rng.u8(0..10) < 3 {
                options = options
                    .concurrency_key(format!("k{}", rng.u8(0..2)))
                    .coalesce(Coalesce::Skip);
            }
            let after = Duration::from_millis(rng.u64(0..=10_000));
            let worker = rng.usize(0..plan.workers);
            let mut input = rng.u64(1..1000);
            let waits = rng.u8(0..10) < plan.wait_share;
            if waits {
                // Half with a deadline of 1-25 s.
                let timeout_s = if rng.bool() { rng.u64(1..=25) } else { 0 };
                input += WAITS + timeout_s * 1000;
            }
            let cancel = (rng.u8(0..10) < 2).then(|| {
                let after = match waits {
                    true => rng.u64(0..=30_000),
                    false => rng.u64(0..=plan.lease.as_millis() as u64 * 3),
                };
                (Duration::from_millis(after), rng.usize(0..plan.workers))
            });
            let signal = (waits && rng.u8(0..10) < 7).then(|| Signal {
                after: Duration::from_millis(rng.u64(0..=30_000)),
                worker: rng.usize(0..plan.workers),
                payload: rng.u64(1..1_000_000),
                again: rng
                    .bool()
                    .then(|| Duration::from_millis(rng.u64(0..=5_000))),
                other: rng
                    .bool()
                    .then(|| Duration::from_millis(rng.u64(0..=5_000))),
            });
            Trigger {
                after,
                worker,
                input,
                options,
                retry: idempotent,
                cancel,
                signal,
            }
        })
        .collect();

    let pending_triggers = Arc::new(AtomicUsize::new(triggers.len()));
    for trigger in triggers {
        let handle = handles[trigger.worker].clone();
        let canceller = trigger
            .cancel
            .map(|(after, worker)| (after, worker, workers[worker].clone()));
        let (trace, pending) = (trace.clone(), pending_triggers.clone());
        let signaller = trigger.signal.clone().map(|signal| {
            let durably = workers[signal.worker].clone();
            (signal, durably, memory.clone(), trace.clone())
        });
        let signals_pending = pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(trigger.after).await;
            let run = loop {
                let answer = handle
                    .trigger_with(trigger.input, trigger.options.clone())
                    .await;
                let run = answer.ok().map(|result| result.run.id);
                trace.push(Event::Triggered {
                    worker: trigger.worker,
                    input: trigger.input,
                    run: run.clone(),
                    at: at(),
                });
                match run {
                    None if trigger.retry => tokio::time::sleep(Duration::from_millis(200)).await,
                    run => break run,
                }
            };
            if let (Some(run), Some((signal, durably, memory, trace))) = (&run, signaller) {
                signals_pending.fetch_add(1, Ordering::SeqCst);
                let run = run.clone();
                tokio::spawn(async move {
                    signal_run(run, signal, durably, memory, trace).await;
                    signals_pending.fetch_sub(1, Ordering::SeqCst);
                });
            }
            if let (Some(run), Some((after, worker, durably))) = (run, canceller) {
                tokio::time::sleep(after).await;
                trace.push(Event::CancelRequested {
                    worker,
                    run: run.clone(),
                    at: at(),
                });
                let _ = durably.cancel(&run).await;
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    // Until every trigger (and cancel) is done and every run is terminal.
    let started = tokio::time::Instant::now();
    let mut stuck = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runs = memory.get_runs(&RunFilter::new()).await.expect("runs");
        let mut active = Vec::new();
        for run in &runs {
            if !run.status.is_terminal() && !waits_for_ever(&memory, run).await {
                active.push(format!("{} ({})", run.id, run.status));
            }
        }
        if active.is_empty() && pending_triggers.load(Ordering::SeqCst) == 0 {
            break;
        }
        if started.elapsed() >= BOUND {
            stuck = active;
            break;
        }
    }
    let settled_after = started.elapsed();
    // Let every held call come back (a frozen worker wakes up): whatever it does then is in
    // the trace too.
    tokio::time::sleep(plan.longest_hold() + plan.lease).await;
    for durably in &workers {
        durably.stop_within(plan.lease).await;
    }
    let runs = memory.get_runs(&RunFilter::new()).await.expect("runs");
    let mut waits = Vec::new();
    for run in &runs {
        waits.extend(memory.get_waits(&run.id).await.expect("waits"));
    }
    let mut faults = FaultCounts::default();
    for store in &faulty {
        faults += store.counts();
    }
    Outcome {
        seed,
        plan,
        trace: trace.events(),
        runs,
        faults,
        settled_after,
        stuck,
        waits,
    }
}

/// Whether `run` is legitimately waiting for good: suspended on a pending wait that has no
/// deadline (nobody may ever signal it).
async fn waits_for_ever(memory: &MemoryStore, run: &Run) -> bool {
    if run.status != RunStatus::Waiting {
        return false;
    }
    let Some(wait_id) = &run.waiting_on_wait_id else {
        return false;
    };
    let wait = memory.get_wait(wait_id).await.ok().flatten();
    wait.is_some_and(|wait| wait.status == WaitStatus::Pending && wait.deadline_at.is_none())
}

/// The signaller of one run: waits for its wait to be prepared (the id a real signaller would
/// get in an email link), then signals it, retrying the same signal while the store fails;
/// then perhaps the same signal again, and another one.
async fn signal_run(
    run: String,
    signal: Signal,
    durably: Durably,
    memory: MemoryStore,
    trace: Trace,
) {
    tokio::time::sleep(signal.after).await;
    let wait = loop {
        let waits = memory.get_waits(&run).await.unwrap_or_default();
        if let Some(wait) = waits.into_iter().find(|wait| wait.name == WAIT_NAME) {
            break wait;
        }
        let ended = memory
            .get_run(&run)
            .await
            .ok()
            .flatten()
            .is_none_or(|run| run.status.is_terminal());
        if ended {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let send = |signal_id: String, payload: u64| {
        let (durably, trace, run, wait) =
            (durably.clone(), trace.clone(), run.clone(), wait.id.clone());
        async move {
            // Retried while the store fails (the same signal: idempotent).
            for _ in 0..5 {
                let answer = durably
                    .signal(&wait, serde_json::json!(payload), &signal_id)
                    .await;
                let answer = match answer {
                    Ok(signalled) if signalled.disposition == SignalDisposition::Accepted => {
                        "accepted".to_owned()
                    }
                    Ok(_) => "duplicate".to_owned(),
                    Err(Error::WaitExpired { .. }) => "expired".to_owned(),
                    Err(Error::Conflict(_)) => "conflict".to_owned(),
                    Err(error) if error.to_string().contains(FAULT_MARKER) => "fault".to_owned(),
                    Err(error) => error.to_string(),
                };
                trace.push(Event::SignalAnswered {
                    worker: signal.worker,
                    run: run.clone(),
                    wait: wait.clone(),
                    signal_id: signal_id.clone(),
                    payload,
                    answer: answer.clone(),
                    at: at(),
                });
                if answer != "fault" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    send(format!("{run}-a"), signal.payload).await;
    if let Some(after) = signal.again {
        tokio::time::sleep(after).await;
        send(format!("{run}-a"), signal.payload).await;
    }
    if let Some(after) = signal.other {
        tokio::time::sleep(after).await;
        send(format!("{run}-b"), signal.payload + 1).await;
    }
}
