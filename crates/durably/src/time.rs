//! Timestamps (`YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC) and monotonic ULID ids, as stored by upstream.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

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
        Timestamp(crate::runtime::wall_clock_millis())
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

    /// The earliest timestamp with a stored text form: `0000-01-01T00:00:00.000Z`.
    pub(crate) const EARLIEST: Timestamp = Timestamp(-62_167_219_200_000);
    /// The latest timestamp with a stored text form: `9999-12-31T23:59:59.999Z`.
    pub(crate) const LATEST: Timestamp = Timestamp(253_402_300_799_999);

    /// The stored text form of the nearest timestamp within years 0..=9999: the text to
    /// compare with stored timestamps in SQL (the form of any other instant is not in their
    /// order, and none is stored).
    pub(crate) fn stored_text(self) -> String {
        self.clamp(Self::EARLIEST, Self::LATEST).to_string()
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

impl Timestamp {
    /// The `YYYY-MM-DDTHH:MM:SS.mmmZ` text as bytes, or `None` outside years 0..=9999.
    fn iso_bytes(self) -> Option<[u8; 24]> {
        // Hot path (every write stores timestamps): digits written directly, no formatter.
        let millis = self.0;
        let days = millis.div_euclid(86_400_000);
        let ms_of_day = millis.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, ms_of_day / 3_600_000);
        put(14, 2, ms_of_day / 60_000 % 60);
        put(17, 2, ms_of_day / 1000 % 60);
        put(20, 3, ms_of_day % 1000);
        Some(out)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.iso_bytes() {
            // The buffer holds ASCII digits and separators only.
            Some(bytes) => f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?),
            None => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
    #[cfg(feature = "testing")]
    if let Some(id) = seeded_id_at(millis) {
        return id;
    }
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

/// Ids of the calling thread drawn from a seeded generator, with their own monotonic state
/// (see [`crate::testing::use_seeded_ids`]).
#[cfg(feature = "testing")]
struct SeededIds {
    rng: fastrand::Rng,
    last: (u64, u128),
}

#[cfg(feature = "testing")]
thread_local! {
    static SEEDED_IDS: std::cell::RefCell<Option<SeededIds>> =
        const { std::cell::RefCell::new(None) };
}

/// From now on, ids made on this thread come from a generator seeded with `seed`, monotonic
/// on this thread alone (the process-wide sequence is left as it is).
#[cfg(feature = "testing")]
pub(crate) fn use_seeded_ids(seed: u64) {
    SEEDED_IDS.with(|ids| {
        *ids.borrow_mut() = Some(SeededIds {
            rng: fastrand::Rng::with_seed(seed),
            last: (0, 0),
        });
    });
}

/// The next seeded id of this thread (`None` when this thread has no seeded generator).
#[cfg(feature = "testing")]
fn seeded_id_at(millis: u64) -> Option<String> {
    SEEDED_IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        let ids = ids.as_mut()?;
        let mut random = || (ids.rng.u128(..) & RANDOM_BITS_MASK) >> 1;
        let (ms, part) = if millis > ids.last.0 {
            (millis, random())
        } else if ids.last.1 < RANDOM_BITS_MASK {
            (ids.last.0, ids.last.1 + 1)
        } else {
            (ids.last.0 + 1, random())
        };
        ids.last = (ms, part);
        Some(ulid::Ulid::from_parts(ms, part).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_clamps_to_the_years_with_a_text_form() {
        assert_eq!(Timestamp::EARLIEST.to_string(), "0000-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::LATEST.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp::from_millis(i64::MIN).stored_text(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(i64::MAX).stored_text(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_774_787_696_789).stored_text(),
            "2026-03-29T12:34:56.789Z"
        );
    }

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
    fn formatting_matches_chrono_across_dates() {
        let samples = [
            0i64,
            951_782_400_000,     // 2000-02-29
            1_709_164_800_123,   // 2024-02-29T00:00:00.123Z
            1_774_787_696_789,   // 2026-03-29T12:34:56.789Z
            4_102_444_799_999,   // 2099-12-31T23:59:59.999Z
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
        ];
        for millis in samples
            .into_iter()
            .chain((0..2000).map(|i| i * 86_399_999_937))
        {
            let expected = chrono::DateTime::from_timestamp_millis(millis)
                .expect("in range")
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(Timestamp::from_millis(millis).to_string(), expected);
        }
    }

    #[cfg(feature = "testing")]
    #[test]
    fn seeded_ids_repeat_for_a_seed_and_stay_monotonic() {
        let at = Timestamp::from_millis(1_800_000_000_000);
        let draw = |seed| {
            use_seeded_ids(seed);
            (0..100).map(|_| new_id_at(at)).collect::<Vec<_>>()
        };
        let (first, again, other) = (draw(7), draw(7), draw(8));
        assert_eq!(first, again);
        assert_ne!(first, other);
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        SEEDED_IDS.with(|ids| *ids.borrow_mut() = None);
    }

    #[test]
    fn ids_are_strictly_increasing_within_one_millisecond() {
        let at = Timestamp::now();
        let ids: Vec<String> = (0..1000).map(|_| new_id_at(at)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.len() == 26));
    }
}
