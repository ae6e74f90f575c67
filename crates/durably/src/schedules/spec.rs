//! When a schedule fires: its cron expression read in its time zone (`croner`, `chrono-tz`), and
//! which due slots a firing covers under its [`CatchUp`] policy.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::CatchUp;
use crate::error::{Error, Result};
use crate::time::Timestamp;

/// How late a slot may be fired and still count as on time (Quartz's default misfire
/// threshold): a due slot older than this when the scheduler sees it was missed, and the
/// schedule's [`CatchUp`] policy decides whether it runs.
pub const ON_TIME_TOLERANCE: Duration = Duration::from_secs(60);

/// The most slots one firing covers (a per-second cron after a long gap): the oldest on-time
/// slots beyond it are skipped.
const MAX_SLOTS_PER_FIRING: usize = 1_000;

/// A parsed cron expression in its time zone.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    cron: Cron,
    zone: Tz,
}

impl Spec {
    /// Parses `cron` (5 fields, or 6 with seconds first) and the IANA time zone `time_zone`.
    /// Either invalid, or an expression that never matches, is [`Error::Validation`] naming
    /// the value and what to do.
    pub(crate) fn parse(name: &str, cron: &str, time_zone: &str) -> Result<Self> {
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|error| {
                Error::Validation(format!(
                    "Invalid cron expression \"{cron}\" for schedule \"{name}\": {error}. Use 5 \
                     fields (minute hour day-of-month month day-of-week) or 6 with seconds \
                     first, e.g. \"0 3 * * *\" or \"0 0 3 * * *\""
                ))
            })?;
        let zone: Tz = time_zone.parse().map_err(|_| {
            Error::Validation(format!(
                "Unknown time zone \"{time_zone}\" for schedule \"{name}\": use an IANA name such \
                 as \"UTC\", \"Europe/Paris\" or \"America/New_York\""
            ))
        })?;
        let spec = Spec { cron: parsed, zone };
        // An expression that matches no date (`0 0 30 2 *`) has no next slot.
        spec.next_after(Timestamp::from_millis(0)).map_err(|_| {
            Error::Validation(format!(
                "Cron expression \"{cron}\" for schedule \"{name}\" never matches a date: check \
                 its day-of-month and month fields"
            ))
        })?;
        Ok(spec)
    }

    fn local(&self, at: Timestamp) -> Result<chrono::DateTime<Tz>> {
        Utc.timestamp_millis_opt(at.as_millis())
            .single()
            .map(|utc| utc.with_timezone(&self.zone))
            .ok_or_else(|| Error::Validation(format!("time out of range: {}", at.as_millis())))
    }

    fn search_failed(&self, error: croner::errors::CronError) -> Error {
        Error::Validation(format!(
            "cron expression \"{}\" has no slot near this time: {error}",
            self.cron.pattern
        ))
    }

    /// The first slot strictly after `at`.
    pub(crate) fn next_after(&self, at: Timestamp) -> Result<Timestamp> {
        let next = self
            .cron
            .find_next_occurrence(&self.local(at)?, false)
            .map_err(|e| self.search_failed(e))?;
        Ok(Timestamp::from_millis(next.timestamp_millis()))
    }

    /// The last slot strictly before `at`, if any.
    fn previous_before(&self, at: Timestamp) -> Option<Timestamp> {
        let local = self.local(at - Duration::from_millis(1)).ok()?;
        let previous = self.cron.find_previous_occurrence(&local, true).ok()?;
        Some(Timestamp::from_millis(previous.timestamp_millis()))
    }

    /// What a firing at `now` covers for a schedule whose next slot is `next_fire_at`: `None`
    /// when that slot is not due yet. Slots due for at most [`ON_TIME_TOLERANCE`] are on time
    /// and always fire; older ones were missed and fire as `catch_up` says.
    pub(crate) fn plan(
        &self,
        next_fire_at: Timestamp,
        catch_up: CatchUp,
        now: Timestamp,
    ) -> Result<Option<Firing>> {
        if next_fire_at > now {
            return Ok(None);
        }
        let boundary = now - ON_TIME_TOLERANCE;
        let mut slots = Vec::new();
        if next_fire_at < boundary {
            let keep = match catch_up {
                CatchUp::Skip => 0,
                CatchUp::One => 1,
                CatchUp::All { max } => (max as usize).min(MAX_SLOTS_PER_FIRING),
            };
            let mut before = boundary;
            while slots.len() < keep {
                match self.previous_before(before) {
                    Some(slot) if slot >= next_fire_at => {
                        slots.push(slot);
                        before = slot;
                    }
                    _ => break,
                }
            }
            slots.reverse();
        }
        // On-time slots: from the stored slot, or the first one in the tolerance window.
        let mut slot = if next_fire_at >= boundary {
            Some(next_fire_at)
        } else {
            self.next_after(boundary - Duration::from_millis(1)).ok()
        };
        let mut on_time = Vec::new();
        while let Some(at) = slot.filter(|at| *at <= now) {
            on_time.push(at);
            slot = self.next_after(at).ok();
        }
        let skip = on_time.len().saturating_sub(MAX_SLOTS_PER_FIRING);
        slots.extend(on_time.into_iter().skip(skip));
        Ok(Some(Firing {
            expected: next_fire_at,
            slots,
            next: self.next_after(now)?,
        }))
    }
}

/// One firing of a schedule, as planned by [`Spec::plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Firing {
    /// The schedule's `next_fire_at` this firing moves on from (compare-and-set).
    pub(crate) expected: Timestamp,
    /// The slots that get a run, oldest first (may be empty: every due slot was skipped).
    pub(crate) slots: Vec<Timestamp>,
    /// The schedule's next slot afterwards: the first strictly after the firing's `now`.
    pub(crate) next: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).expect("timestamp")
    }

    #[test]
    fn five_and_six_fields_are_accepted() {
        let minutes = Spec::parse("s", "*/15 * * * *", "UTC").expect("5 fields");
        assert_eq!(
            minutes
                .next_after(at("2026-01-01T00:00:00Z"))
                .expect("next"),
            at("2026-01-01T00:15:00Z")
        );
        let seconds = Spec::parse("s", "*/10 * * * * *", "UTC").expect("6 fields");
        assert_eq!(
            seconds
                .next_after(at("2026-01-01T00:00:00Z"))
                .expect("next"),
            at("2026-01-01T00:00:10Z")
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let error = Spec::parse("s", "61 * * * *", "UTC").expect_err("bad cron");
        assert!(error.to_string().contains("\"61 * * * *\""), "{error}");
        let error = Spec::parse("s", "* * * * *", "Mars/Olympus").expect_err("bad zone");
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
        let error = Spec::parse("s", "0 0 30 2 *", "UTC").expect_err("never");
        assert!(error.to_string().contains("never matches"), "{error}");
    }

    #[test]
    fn catch_up_policies_pick_the_missed_slots() {
        let hourly = Spec::parse("s", "0 * * * *", "UTC").expect("cron");
        let stored = at("2026-01-01T01:00:00Z");
        let now = at("2026-01-01T05:00:30Z");
        let plan = |catch_up| hourly.plan(stored, catch_up, now).expect("plan");
        let skip = plan(CatchUp::Skip).expect("due");
        assert_eq!(skip.slots, vec![at("2026-01-01T05:00:00Z")]);
        assert_eq!(skip.next, at("2026-01-01T06:00:00Z"));
        assert_eq!(
            plan(CatchUp::One).expect("due").slots,
            vec![at("2026-01-01T04:00:00Z"), at("2026-01-01T05:00:00Z")]
        );
        assert_eq!(
            plan(CatchUp::All { max: 2 }).expect("due").slots,
            vec![
                at("2026-01-01T03:00:00Z"),
                at("2026-01-01T04:00:00Z"),
                at("2026-01-01T05:00:00Z")
            ]
        );
        assert_eq!(plan(CatchUp::All { max: 10 }).expect("due").slots.len(), 5);
        assert_eq!(
            hourly
                .plan(stored, CatchUp::One, stored - Duration::from_secs(1))
                .expect("plan"),
            None
        );
    }
}
