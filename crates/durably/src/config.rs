//! What an instance does ([`Config`](crate::Config)) and how fast it does it ([`Tuning`](crate::Tuning)), with their
//! defaults; set them through [`crate::DurablyBuilder`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// Validated configuration of a [`Durably`](crate::Durably) instance (upstream option names in parentheses):
/// what it does. How fast it does it is [`Tuning`](crate::Tuning), in [`Config::tuning`](crate::Config::tuning).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// How long an idle worker waits before polling again (`pollingIntervalMs`, default 1 s).
    /// A trigger in the same process wakes the worker at once.
    pub polling_interval: Duration,
    /// Lease length at claim and at each renewal (`leaseMs`, default 30 s).
    pub lease_duration: Duration,
    /// How often a running run's lease is renewed (`leaseRenewIntervalMs`, default 5 s).
    pub lease_renew_interval: Duration,
    /// Runs executed at once by the worker (`maxConcurrentRuns`, 1..=1000, default 1).
    pub max_concurrent_runs: usize,
    /// Keep step outputs after a run completes or is cancelled (`preserveSteps`, default
    /// `false`; a failed run keeps them anyway, for [`Durably::resume`](crate::Durably::resume)). A policy of the
    /// store ([`Store::preserves_steps`](crate::Store::preserves_steps)): the builder sets it on the stores it opens, and
    /// reads it from a store it is given.
    pub preserve_steps: bool,
    /// Delete terminal runs this long after they ended (`retainRuns`, default: keep forever).
    pub retain_runs: Option<Duration>,
    /// Store `step.log()` entries (default `true`; upstream needed a plugin).
    pub persist_logs: bool,
    /// Run streams ([`Durably::subscribe`](crate::Durably::subscribe)) follow a run that another process executes by
    /// reading it every `polling_interval` (default `true`). Off where something else relays
    /// other processes' events into this instance (as `durably serve` does), which the
    /// following would repeat.
    pub follow_runs_elsewhere: bool,
    /// Bounds on what one run may carry and one listing may ask ([`Limits`](crate::Limits); its defaults
    /// unless [`DurablyBuilder::limits`](crate::DurablyBuilder::limits) sets others).
    pub limits: Limits,
    /// Speed knobs that change no outcome, only how many writes and wake-ups a run costs
    /// ([`Tuning`](crate::Tuning); its defaults unless [`DurablyBuilder::tuning`](crate::DurablyBuilder::tuning) sets others).
    pub tuning: Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            polling_interval: Duration::from_millis(1000),
            lease_duration: Duration::from_millis(30_000),
            lease_renew_interval: Duration::from_millis(5_000),
            max_concurrent_runs: 1,
            preserve_steps: false,
            retain_runs: None,
            persist_logs: true,
            follow_runs_elsewhere: true,
            limits: Limits::default(),
            tuning: Tuning::default(),
        }
    }
}

/// The worker's speed knobs, with the defaults that measured best. None of them changes what
/// happens to a run (every run still executes once per claim, in order, fenced); they change
/// how many database writes and wake-ups it costs, and what the database shows meanwhile.
/// Figures are from `durably bench` on the project's reference machine (2 cores; see
/// `docs/performance.md` and `docs/upstream-compat.md`); leave the defaults unless a
/// measurement of your own says otherwise.
///
/// ```
/// use std::time::Duration;
/// use durably::{Durably, Tuning};
/// let tuning = Tuning::new().claim_ahead_below(Duration::ZERO).trigger_hand_off(false);
/// let durably = Durably::builder().sqlite(":memory:").tuning(tuning).build()?;
/// assert_eq!(durably.config().tuning, tuning);
/// # Ok::<_, durably::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tuning {
    /// Hand triggers to this process's worker while it runs. Default `true`.
    ///
    /// The worker loop enqueues the run and claims for its free slots in the same
    /// transaction, so the run starts after one commit instead of two (batch triggers, and
    /// every trigger while the worker is stopped or backing off, enqueue on their own). Off:
    /// every trigger enqueues on its own and wakes the worker.
    ///
    /// Measured with `durably bench --workload latency`: 3.2–3.4 commits per job instead of
    /// 4.4–4.9 on SQLite, and on PostgreSQL about 10 % less server CPU for 500
    /// trigger-and-waits (0.88–0.96 s against 1.01–1.03 s); the p50 latency is unchanged
    /// within the machine's noise, since the commit it saves costs about as much as the
    /// hand-over between tasks it adds. Where a commit's flush takes milliseconds (PostgreSQL
    /// on real disks), each trigger saves one.
    pub trigger_hand_off: bool,
    /// Claim ahead after a run that executed for less than this. Default 100 ms;
    /// `Duration::ZERO` turns it off.
    ///
    /// The worker slot that ran such a run claims one more run than it needs and holds it
    /// (leased) while the next run executes, so that a run's completion and the next run's
    /// first step share a write. A held run shows as `leased` meanwhile (at most one per
    /// slot); one without a concurrency key goes back to pending once the run ahead of it has
    /// taken this long, so a long run delays at most one run per slot by this much. After a
    /// keyed run nothing is claimed ahead.
    ///
    /// Measured on PostgreSQL in 4 interleaved pairs: one-step jobs from 2,880–3,010 to
    /// 4,300–4,530 jobs/s at concurrency 8 (commits per job 0.34 → 0.14) and from 1,070–1,110
    /// to 1,480–1,570 at concurrency 1; 4 worker processes from 1,700–1,900 to 1,930–2,100;
    /// `steps-10` and latency unchanged within the noise. On SQLite, one-step jobs at
    /// concurrency 1 went from 6,260–6,790 to 6,290–8,300, the rest unchanged. The 100 ms
    /// threshold was not tuned by measurement: it bounds the delay a held run may suffer
    /// behind a slow one, and is far above what the benchmarks' short jobs take.
    pub claim_ahead_below: Duration,
    /// How long a step's function runs before its attempt is recorded as `started`. Default
    /// 50 ms; `Duration::ZERO` records every attempt before its function starts, as upstream
    /// does.
    ///
    /// An attempt that ends sooner is written once, with its outcome, in the transaction that
    /// writes the step's checkpoint, so a fast step costs no write more than before attempts
    /// existed; a longer one gets its `started` row while it runs, so a worker that crashes
    /// or freezes in it leaves an attempt whose interruption reason says what happened. Only a
    /// crash within this delay of a step's start goes unrecorded (see [`crate::attempts`]).
    pub attempt_record_delay: Duration,
    /// Runs a worker keeps in progress at once, of which at most `max_concurrent_runs`
    /// execute job code. Default `None`: a worker keeps `max_concurrent_runs` runs in progress,
    /// each in its slot until its job function returns, as upstream's `maxConcurrentRuns`.
    ///
    /// With `Some(n)` (more than `max_concurrent_runs`, at most 10,000), a worker claims up to
    /// `n` runs and keeps them leased; a run gives its turn to another while it waits for a
    /// completed step's checkpoint to become durable, and waits for a turn again before its
    /// job function goes on, ahead of the runs waiting to start (`docs/performance.md`,
    /// "Local queue"). Every guarantee holds: a step's result is durable before the job
    /// continues, every write is fenced, and a crashed worker's runs are taken over when
    /// their leases expire. What changes: more runs are leased at once, and at most
    /// `max_concurrent_runs` job functions *execute* at once, while more may have started
    /// (some waiting for their checkpoints). Jobs that use `max_concurrent_runs` to bound
    /// something they hold across steps (connections, files) should keep the default.
    pub local_queue: Option<usize>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            trigger_hand_off: true,
            claim_ahead_below: Duration::from_millis(100),
            attempt_record_delay: Duration::from_millis(50),
            local_queue: None,
        }
    }
}

impl Tuning {
    /// The measured defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`trigger_hand_off`](Self::trigger_hand_off).
    pub fn trigger_hand_off(mut self, hand_off: bool) -> Self {
        self.trigger_hand_off = hand_off;
        self
    }

    /// Sets [`claim_ahead_below`](Self::claim_ahead_below).
    pub fn claim_ahead_below(mut self, below: Duration) -> Self {
        self.claim_ahead_below = below;
        self
    }

    /// Sets [`local_queue`](Self::local_queue).
    pub fn local_queue(mut self, runs: Option<usize>) -> Self {
        self.local_queue = runs;
        self
    }

    /// Sets [`attempt_record_delay`](Self::attempt_record_delay).
    pub fn attempt_record_delay(mut self, delay: Duration) -> Self {
        self.attempt_record_delay = delay;
        self
    }
}

/// Parses a retention period: a whole number followed by `d` (days), `h` (hours) or `m`
/// (minutes), e.g. `30d`, `12h`, `90m`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(durably::parse_retention("12h").unwrap(), Duration::from_secs(12 * 3600));
/// assert!(durably::parse_retention("30s").is_err());
/// ```
pub fn parse_retention(text: &str) -> Result<Duration> {
    let invalid = || {
        Error::Config(format!(
            "Invalid duration format: \"{text}\". Use a whole number followed by d, h or m, e.g. '30d', '12h', '90m'"
        ))
    };
    let unit = text.chars().last().ok_or_else(invalid)?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let unit_secs = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        _ => return Err(invalid()),
    };
    amount
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}
