//! Durable waits (upstream schema versions 3 and 4): a run that waits for an external signal
//! (a human approval, a webhook) without holding a lease, a worker slot or its concurrency key,
//! with an optional deadline fixed when the wait is first prepared.
//!
//! A wait is prepared by name inside a run ([`crate::Store::prepare_wait`]; a replay returns the
//! same wait), signalled from outside ([`crate::Store::signal_wait`], idempotent per signal id),
//! and resolved either by a signal strictly before its deadline or by the deadline itself
//! ([`WaitOutcome::Timeout`]). A run awaiting a pending wait is suspended (`waiting`) and
//! resumed under a fresh, fenced lease once the wait is resolved.
//!
//! Times of waits (creation, deadline arbitration, suspension, resolution, first resume) come
//! from the *database clock* (upstream v4 §4.7): PostgreSQL's `clock_timestamp()`; on SQLite the
//! clock of the process that executes the write (which is what SQLite's `'now'` reads), read
//! inside its transaction; `durably::testing::MemoryStore` (feature `testing`) the `now` its caller passes. Lease
//! guards use the caller's `now`, as for every other lease holder's write.

#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "testing")),
    allow(dead_code)
)]

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Timestamp;

mod sleep;
mod step;
mod timer;

pub use timer::{TimerKind, why_waiting};

pub use sleep::{SLEEP_WAIT_PREFIX, sleep_metadata};

/// Where a wait stands (`durably_waits.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WaitStatus {
    /// Prepared, no result yet.
    Pending,
    /// An immutable result: see [`DurableWait::outcome`].
    Resolved,
    /// Was pending when its run was cancelled.
    Cancelled,
    /// Was pending when its run completed or failed.
    Closed,
}

impl WaitStatus {
    /// The exact string stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitStatus::Pending => "pending",
            WaitStatus::Resolved => "resolved",
            WaitStatus::Cancelled => "cancelled",
            WaitStatus::Closed => "closed",
        }
    }

    /// Parses the stored string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(WaitStatus::Pending),
            "resolved" => Some(WaitStatus::Resolved),
            "cancelled" => Some(WaitStatus::Cancelled),
            "closed" => Some(WaitStatus::Closed),
            _ => None,
        }
    }
}

/// How a resolved wait was resolved (`durably_waits.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WaitOutcome {
    /// A signal arrived strictly before the deadline.
    Signal,
    /// The deadline passed first.
    Timeout,
}

impl WaitOutcome {
    /// The exact string stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitOutcome::Signal => "signal",
            WaitOutcome::Timeout => "timeout",
        }
    }

    /// Parses the stored string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "signal" => Some(WaitOutcome::Signal),
            "timeout" => Some(WaitOutcome::Timeout),
            _ => None,
        }
    }
}

/// What awaiting a resolved wait gives the job (upstream `{ type: 'signal', payload }` /
/// `{ type: 'timeout' }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum WaitResult {
    /// The signal's payload (JSON `null` when the signal carried none).
    Signal {
        /// The payload as stored (canonical JSON).
        payload: Value,
    },
    /// The deadline passed before any signal.
    Timeout,
}

/// How [`crate::Store::signal_wait`] treated a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SignalDisposition {
    /// The signal resolved the wait.
    Accepted,
    /// The same signal (same id, identical canonical payload) had already resolved the wait;
    /// nothing changed.
    Duplicate,
}

/// A wait to prepare ([`crate::Store::prepare_wait`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewWait {
    /// The wait's name: its identity within the run (non-blank).
    pub name: String,
    /// Metadata shown with the wait (stored as canonical JSON).
    pub metadata: Option<Value>,
    /// How long after its first preparation the wait times out (`None`: never), at most
    /// [`MAX_TIMEOUT_MS`] milliseconds.
    pub timeout_ms: Option<u64>,
}

impl NewWait {
    /// A wait named `name`, without metadata or timeout.
    pub fn new(name: impl Into<String>) -> Self {
        NewWait {
            name: name.into(),
            metadata: None,
            timeout_ms: None,
        }
    }

    /// With this metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// With a timeout: the wait is resolved as [`WaitResult::Timeout`] this long after its
    /// first preparation, unless signalled before (rounded down to milliseconds).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// With a timeout of `timeout_ms` milliseconds.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Upstream's validation (§4.1): a non-blank name, a positive safe-integer timeout.
    pub fn validate(&self) -> crate::Result<()> {
        if self.name.trim().is_empty() {
            return Err(crate::Error::Validation(
                "Wait name must be non-empty".into(),
            ));
        }
        if let Some(timeout) = self.timeout_ms
            && (timeout == 0 || timeout > MAX_TIMEOUT_MS)
        {
            return Err(crate::Error::Validation(
                "timeoutMs must be a positive safe integer".into(),
            ));
        }
        Ok(())
    }
}

impl From<&str> for NewWait {
    fn from(name: &str) -> Self {
        NewWait::new(name)
    }
}

impl From<String> for NewWait {
    fn from(name: String) -> Self {
        NewWait::new(name)
    }
}

/// The largest timeout a wait accepts: JavaScript's largest safe integer (upstream's rule).
pub const MAX_TIMEOUT_MS: u64 = (1 << 53) - 1;

/// The largest time JavaScript's `Date` represents (8.64e15 ms after the epoch): a deadline
/// beyond it is refused (`timeoutMs exceeds the representable date range`).
pub const MAX_DATE_MS: i64 = 8_640_000_000_000_000;

/// The deadline of a wait prepared at `now_ms` (database clock) with `timeout_ms`, or the
/// validation error upstream gives when it falls outside the JavaScript date range.
pub fn deadline_after(now_ms: i64, timeout_ms: Option<u64>) -> crate::Result<Option<Timestamp>> {
    let Some(timeout) = timeout_ms else {
        return Ok(None);
    };
    let deadline = i64::try_from(timeout)
        .ok()
        .and_then(|t| now_ms.checked_add(t))
        .filter(|d| *d <= MAX_DATE_MS);
    match deadline {
        Some(deadline) => Ok(Some(Timestamp::from_millis(deadline))),
        None => Err(crate::Error::Validation(
            "timeoutMs exceeds the representable date range".into(),
        )),
    }
}

/// A durable wait (`Store::get_wait`, `Store::get_waits`, `GET /waits`).
///
/// Serializes to upstream's `DurableWait` JSON: camelCase, in upstream's key order (§4.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct DurableWait {
    /// ULID.
    pub id: String,
    /// The run that prepared it.
    pub run_id: String,
    /// Its name (unique within the run).
    pub name: String,
    /// Metadata given when it was prepared.
    pub metadata: Option<Value>,
    /// Where it stands.
    pub status: WaitStatus,
    /// The accepted signal's payload (`None` without one; JSON `null` payloads read as
    /// `Some(Value::Null)`).
    pub payload: Option<Value>,
    /// The accepted signal's id.
    pub signal_id: Option<String>,
    /// When it was first prepared (database clock).
    pub created_at: Timestamp,
    /// Its deadline, if it has a timeout.
    pub deadline_at: Option<Timestamp>,
    /// How it was resolved (`None` unless resolved).
    pub outcome: Option<WaitOutcome>,
    /// When a run was first suspended on it.
    pub suspended_at: Option<Timestamp>,
    /// When it was resolved, cancelled or closed (a timeout: the deadline itself).
    pub resolved_at: Option<Timestamp>,
    /// When its run was first claimed after it was resolved.
    pub first_resumed_at: Option<Timestamp>,
    /// Milliseconds from suspension to resolution (computed at read time, §4.5).
    pub input_wait_ms: Option<u64>,
    /// Milliseconds from resolution (or suspension, if later) to the first resume (computed at
    /// read time, §4.5).
    pub execution_slot_wait_ms: Option<u64>,
}

impl DurableWait {
    /// The wait's result, once resolved (`None` while pending, cancelled or closed).
    pub fn result(&self) -> Option<WaitResult> {
        match (self.status, self.outcome) {
            (WaitStatus::Resolved, Some(WaitOutcome::Timeout)) => Some(WaitResult::Timeout),
            (WaitStatus::Resolved, _) => Some(WaitResult::Signal {
                payload: self.payload.clone().unwrap_or(Value::Null),
            }),
            _ => None,
        }
    }

    /// Sets [`DurableWait::input_wait_ms`] and [`DurableWait::execution_slot_wait_ms`] from the
    /// stored times (`timing_known`: the row was written by schema-v4 code).
    pub fn with_timing(mut self, timing_known: bool) -> Self {
        let (input, slot) = timing(
            timing_known,
            self.outcome,
            self.suspended_at,
            self.resolved_at,
            self.first_resumed_at,
        );
        self.input_wait_ms = input;
        self.execution_slot_wait_ms = slot;
        self
    }
}

/// Upstream's read-time timing rule (§4.5): `(inputWaitMs, executionSlotWaitMs)`.
///
/// Both are `None` without an outcome, for rows from before schema v4 (`timing_known` false)
/// or without a resolution time. With no suspension both are 0 (a result that was already
/// final when awaited). Otherwise the input wait is resolution − suspension and the slot wait
/// first resume − max(resolution, suspension), both at least 0; the slot wait is `None` until
/// the first resume.
pub fn timing(
    timing_known: bool,
    outcome: Option<WaitOutcome>,
    suspended_at: Option<Timestamp>,
    resolved_at: Option<Timestamp>,
    first_resumed_at: Option<Timestamp>,
) -> (Option<u64>, Option<u64>) {
    let (true, Some(_), Some(resolved)) = (timing_known, outcome, resolved_at) else {
        return (None, None);
    };
    let Some(suspended) = suspended_at else {
        return (Some(0), Some(0));
    };
    let input = resolved.millis_since(suspended);
    let slot = first_resumed_at.map(|resumed| resumed.millis_since(resolved.max(suspended)));
    (Some(input), slot)
}

/// The canonical JSON text of `value` (upstream §4.6): `JSON.stringify` after recursively
/// sorting object keys, as metadata and payloads are stored; duplicate signals are detected by
/// comparing these texts, so key order does not matter.
///
/// Keys are sorted by UTF-16 code units, as JavaScript's default sort does (this differs from
/// Rust's `str` order, which is code-point order, only between a key with a character beyond
/// the Basic Multilingual Plane and one with a character in U+E000–U+FFFF at the same place:
/// JavaScript compares the surrogate, 0xD800–0xDBFF, and sorts the former first). Numbers are
/// written as JavaScript writes them for integers and for floats without a fractional part
/// below 1e21 (`1.0` → `1`); other floats use the shortest round-trip form.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => out.push_str(&value.to_string()),
        Value::Number(number) => match number.as_f64() {
            Some(float)
                if !number.is_i64()
                    && !number.is_u64()
                    && float.fract() == 0.0
                    && float.abs() < 1e21 =>
            {
                out.push_str(&format!("{float:.0}"));
            }
            _ => out.push_str(&number.to_string()),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| utf16_order(a.0, b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// The error of a wait that is not this run's (upstream `getWaitResultForRun`).
pub(crate) fn not_this_runs_wait() -> crate::Error {
    crate::Error::Validation("Wait does not belong to this run".into())
}

/// The error of awaiting a cancelled or closed wait.
pub(crate) fn already_closed(wait_id: &str) -> crate::Error {
    crate::Error::Conflict(format!("Wait is already closed: {wait_id}"))
}

/// The error of suspending on a wait that is not this run's, or not pending nor resolved.
pub(crate) fn not_available() -> crate::Error {
    crate::Error::Conflict("Wait is not available for this run".into())
}

/// `Wait not found: <id>`.
pub(crate) fn wait_not_found(wait_id: &str) -> crate::Error {
    crate::Error::NotFound(format!("Wait not found: {wait_id}"))
}

/// `Wait cannot accept this signal: <id>`.
pub(crate) fn cannot_accept(wait_id: &str) -> crate::Error {
    crate::Error::Conflict(format!("Wait cannot accept this signal: {wait_id}"))
}

/// Upstream's rule for the expiry sweep's `limit`: positive (and a safe integer).
pub(crate) fn validate_limit(limit: u64) -> crate::Result<()> {
    match limit == 0 || limit > MAX_TIMEOUT_MS {
        true => Err(crate::Error::Validation(
            "limit must be a positive safe integer".into(),
        )),
        false => Ok(()),
    }
}

/// Upstream's signal-id rule: non-blank.
pub(crate) fn validate_signal_id(signal_id: &str) -> crate::Result<()> {
    match signal_id.trim().is_empty() {
        true => Err(crate::Error::Validation(
            "signalId must be non-empty".into(),
        )),
        false => Ok(()),
    }
}

/// What a signal does to a wait as it stands, after the wait was found and its run locked
/// (upstream §4.3 steps 3–7), given the database time `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SignalStep {
    /// Step 3: the same signal again.
    Duplicate,
    /// Step 4: the wait already timed out.
    Expired,
    /// Step 5: resolved otherwise, cancelled, closed, or the run ended.
    Refused,
    /// Step 6: the deadline has passed: finalize the timeout, commit, then report expiry.
    TimeOutNow,
    /// Step 7: accept.
    Accept,
}

/// Upstream §4.3's decision, in its order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn signal_step(
    status: WaitStatus,
    outcome: Option<WaitOutcome>,
    stored_signal_id: Option<&str>,
    stored_payload: Option<&str>,
    signal_id: &str,
    canonical_payload: &str,
    run_terminal: bool,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> SignalStep {
    if status == WaitStatus::Resolved
        && outcome == Some(WaitOutcome::Signal)
        && stored_signal_id == Some(signal_id)
        && stored_payload == Some(canonical_payload)
    {
        return SignalStep::Duplicate;
    }
    if outcome == Some(WaitOutcome::Timeout) {
        return SignalStep::Expired;
    }
    if status != WaitStatus::Pending || run_terminal {
        return SignalStep::Refused;
    }
    match deadline {
        Some(deadline) if now >= deadline => SignalStep::TimeOutNow,
        _ => SignalStep::Accept,
    }
}

/// Whether a pending wait with `deadline` is overdue at database time `now`.
#[cfg(feature = "testing")]
pub(crate) fn overdue(status: WaitStatus, deadline: Option<Timestamp>, now: Timestamp) -> bool {
    status == WaitStatus::Pending && deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn canonical_json_sorts_keys_recursively_and_writes_numbers_as_javascript() {
        let value = json!({"b": [{"z": 1, "a": 2.0}], "a": null, "c": "x\u{1}", "d": 1.5});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":null,"b":[{"a":2,"z":1}],"c":"x\u0001","d":1.5}"#
        );
        let reordered: Value =
            serde_json::from_str(r#"{"d":1.5,"c":"x\u0001","b":[{"a":2.0,"z":1}],"a":null}"#)
                .expect("json");
        assert_eq!(canonical_json(&reordered), canonical_json(&value));
        assert_eq!(canonical_json(&json!(null)), "null");
        assert_eq!(canonical_json(&json!("é")), "\"é\"");
    }

    #[test]
    fn canonical_json_orders_keys_by_utf16_code_units() {
        // U+FF21 (BMP, above the surrogates) and U+1F600 (a surrogate pair, 0xD83D…): code
        // points order them FF21 first, UTF-16 code units the emoji first, as JavaScript does.
        let value = json!({"\u{FF21}": 1, "\u{1F600}": 2, "a": 3});
        assert_eq!(
            canonical_json(&value),
            "{\"a\":3,\"\u{1F600}\":2,\"\u{FF21}\":1}"
        );
    }

    #[test]
    fn timing_follows_upstreams_read_time_rule() {
        let signal = Some(WaitOutcome::Signal);
        // Unknown timing, no outcome, no resolution: nothing.
        assert_eq!(
            timing(false, signal, Some(t(0)), Some(t(5)), None),
            (None, None)
        );
        assert_eq!(
            timing(true, None, Some(t(0)), Some(t(5)), None),
            (None, None)
        );
        assert_eq!(timing(true, signal, Some(t(0)), None, None), (None, None));
        // Never suspended: both zero.
        assert_eq!(
            timing(true, signal, None, Some(t(5)), None),
            (Some(0), Some(0))
        );
        // Suspended, resolved, not yet resumed.
        assert_eq!(
            timing(true, signal, Some(t(0)), Some(t(5)), None),
            (Some(5), None)
        );
        // Resumed: from the resolution.
        assert_eq!(
            timing(true, signal, Some(t(0)), Some(t(5)), Some(t(12))),
            (Some(5), Some(7))
        );
        // Resolved during the hand-off (before the suspension): input 0, slot from suspension.
        assert_eq!(
            timing(true, signal, Some(t(10)), Some(t(5)), Some(t(14))),
            (Some(0), Some(4))
        );
    }

    #[test]
    fn signal_decisions_follow_upstreams_order() {
        use SignalStep::*;
        let p = WaitStatus::Pending;
        let r = WaitStatus::Resolved;
        let sig = Some(WaitOutcome::Signal);
        let to = Some(WaitOutcome::Timeout);
        let dl = Some(t(10));
        let step = |status, outcome, sid, payload, terminal, now| {
            signal_step(status, outcome, sid, payload, "s1", "{}", terminal, dl, now)
        };
        assert_eq!(step(r, sig, Some("s1"), Some("{}"), true, t(99)), Duplicate);
        assert_eq!(step(r, sig, Some("s1"), Some("[]"), false, t(0)), Refused);
        assert_eq!(step(r, sig, Some("s2"), Some("{}"), false, t(0)), Refused);
        assert_eq!(step(r, to, None, None, false, t(0)), Expired);
        assert_eq!(
            step(WaitStatus::Cancelled, None, None, None, true, t(0)),
            Refused
        );
        assert_eq!(step(p, None, None, None, true, t(0)), Refused);
        assert_eq!(step(p, None, None, None, false, t(9)), Accept);
        assert_eq!(step(p, None, None, None, false, t(10)), TimeOutNow);
    }

    #[test]
    fn new_waits_are_validated_as_upstream_does() {
        assert!(NewWait::new("approve").timeout_ms(1).validate().is_ok());
        assert!(NewWait::new("  ").validate().is_err());
        assert!(NewWait::new("a").timeout_ms(0).validate().is_err());
        assert!(
            NewWait::new("a")
                .timeout_ms(MAX_TIMEOUT_MS + 1)
                .validate()
                .is_err()
        );
        assert_eq!(
            deadline_after(5, Some(10)).expect("ok"),
            Some(Timestamp::from_millis(15))
        );
        assert!(deadline_after(MAX_DATE_MS, Some(1)).is_err());
        assert_eq!(deadline_after(5, None).expect("ok"), None);
    }

    #[test]
    fn a_wait_serializes_in_upstreams_field_order() {
        let wait = DurableWait {
            id: "w".into(),
            run_id: "r".into(),
            name: "n".into(),
            metadata: None,
            status: WaitStatus::Resolved,
            payload: Some(json!({"ok": true})),
            signal_id: Some("s".into()),
            created_at: t(0),
            deadline_at: None,
            outcome: Some(WaitOutcome::Signal),
            suspended_at: Some(t(1)),
            resolved_at: Some(t(3)),
            first_resumed_at: None,
            input_wait_ms: None,
            execution_slot_wait_ms: None,
        }
        .with_timing(true);
        let text = serde_json::to_string(&wait).expect("json");
        let keys: Vec<&str> = [
            "id",
            "runId",
            "name",
            "metadata",
            "status",
            "payload",
            "signalId",
            "createdAt",
            "deadlineAt",
            "outcome",
            "suspendedAt",
            "resolvedAt",
            "firstResumedAt",
            "inputWaitMs",
            "executionSlotWaitMs",
        ]
        .to_vec();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).expect(k))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("\"inputWaitMs\":2"), "{text}");
        assert!(text.contains("\"executionSlotWaitMs\":null"), "{text}");
        assert_eq!(
            wait.result(),
            Some(WaitResult::Signal {
                payload: json!({"ok": true})
            })
        );
    }
}
