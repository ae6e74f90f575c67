//! Timestamps (`YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC) and monotonic ULID ids, as stored by upstream.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time with millisecond precision, stored and sent as `2026-03-29T12:34:56.789Z`.
///
/// The fixed-width text form sorts lexicographically in chronological order, which is what the
/// schema relies on (timestamps are compared as strings in SQL).
///
/// ```
/// use durably::Timestamp;
/// let t = Timestamp::parse("2026-03-29T12:34:56.789Z").unwrap();
/// assert_eq!(t.to_string(), "2026-03-29T12:34:56.789Z");
/// assert_eq!(t.as_millis(), 1_774_787_696_789);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time, truncated to milliseconds.
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(millis)
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// Parses the stored text form (any RFC 3339 timestamp is accepted; precision beyond
    /// milliseconds is dropped).
    pub fn parse(text: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|dt| Timestamp(dt.timestamp_millis()))
    }

    /// Milliseconds elapsed from `earlier` to `self` (0 if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0).max(0) as u64
    }
}

fn duration_millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// `timestamp + duration` (saturating).
impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_millis(duration)))
    }
}

/// `timestamp - duration` (saturating).
impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;

    fn sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_millis(duration)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(dt) => write!(f, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp: {text:?}")))
    }
}

/// Monotonic ULID generator shared by the whole process: ids are strictly increasing even when
/// many are made within one millisecond, so `id` order equals creation order.
static LAST_ULID: Mutex<(u64, u128)> = Mutex::new((0, 0));

const RANDOM_BITS_MASK: u128 = (1u128 << 80) - 1;

/// A new 26-character ULID, strictly greater than every id made before in this process.
pub fn new_id() -> String {
    new_id_at(Timestamp::now())
}

/// A new ULID whose time part is `at` (or later, to stay monotonic).
pub(crate) fn new_id_at(at: Timestamp) -> String {
    let millis = at.as_millis().max(0) as u64;
    let mut last = LAST_ULID
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (ms, random) = if millis > last.0 {
        // Leave headroom in the random part so increments within one millisecond never overflow.
        (millis, random_u80() >> 1)
    } else if last.1 < RANDOM_BITS_MASK {
        (last.0, last.1 + 1)
    } else {
        (last.0 + 1, random_u80() >> 1)
    };
    *last = (ms, random);
    drop(last);
    ulid::Ulid::from_parts(ms, random).to_string()
}

fn random_u80() -> u128 {
    ulid::Ulid::new().random() & RANDOM_BITS_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_with_milliseconds() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let t = Timestamp::parse("2026-03-29T12:34:56.789Z").expect("valid");
        assert_eq!(t.to_string(), "2026-03-29T12:34:56.789Z");
        assert!(Timestamp::parse("yesterday").is_none());
    }

    #[test]
    fn ids_are_strictly_increasing_within_one_millisecond() {
        let at = Timestamp::now();
        let ids: Vec<String> = (0..1000).map(|_| new_id_at(at)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.len() == 26));
    }
}
