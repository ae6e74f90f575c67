//! The operator commands that work on runs and their durable waits. They open the database
//! named by `--db` without starting a worker. One file per kind of command: `list.rs` (`runs`,
//! `waits`), `show.rs` (`run`), `trigger.rs`, `act.rs` (`signal`, `cancel`, `delete`,
//! `retrigger`, `resume`, `wake`, `purge`), `watch.rs`; `ids.rs` resolves a run id or a unique
//! part of it, `format.rs` prints; this file holds the argument parsers they share.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use durably::{
    AttemptStatus, Coalesce, Debounce, Disposition, DurableWait, Durably, InterruptionReason, Log,
    Progress, Run, RunFilter, RunStatus, SignalDisposition, Step, StepAttempt, StepStatus,
    TimerKind, Timestamp, WaitOutcome, WaitStatus,
};
use serde_json::{Value, json};

use crate::db::{DbArgs, Purpose, describe, shell_quote};
use crate::exit::{CANCELLED, CliError, FAILURE, NOT_FOUND, OK};

mod act;
mod format;
mod ids;
mod list;
mod show;
mod trigger;
mod watch;

pub use act::*;
pub(crate) use format::*;
pub(crate) use ids::*;
pub use list::*;
pub use show::*;
pub use trigger::*;
pub use watch::*;

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}); quote strings: '\"text\"'"))
}

/// A status as users type it: the stored names, and `running` for `leased` (what the
/// dashboard and `durably watch` call a leased run).
pub(crate) fn parse_status(text: &str) -> Result<RunStatus, String> {
    if text == "running" {
        return Ok(RunStatus::Leased);
    }
    text.parse::<RunStatus>().map_err(|_| {
        format!(
            "unknown status '{text}': use waiting, pending, leased (or running), completed, failed \
             or cancelled"
        )
    })
}

/// `--input`: a JSON value, or `@FILE` for the JSON in a file, or `@-` for standard input (as
/// curl's `--data @FILE`).
fn parse_input(text: &str) -> Result<Value, String> {
    let (json, source) = match text.strip_prefix('@') {
        Some("-") => {
            let mut json = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut json)
                .map_err(|e| format!("cannot read the input from standard input: {e}"))?;
            (json, Some("standard input".to_owned()))
        }
        Some(path) => {
            let json = std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read the input file {path}: {e}; give a readable JSON file")
            })?;
            (json, Some(format!("the input file {path}")))
        }
        None => (text.to_owned(), None),
    };
    serde_json::from_str(&json).map_err(|e| match source {
        Some(source) => format!("{source} is not JSON ({e})"),
        None => format!(
            "not JSON ({e}); give a JSON value, e.g. '{{\"orderId\": 42}}', and quote strings: \
             '\"text\"', or @FILE for a file's JSON"
        ),
    })
}

fn parse_coalesce(text: &str) -> Result<Coalesce, String> {
    text.parse::<Coalesce>()
        .map_err(|_| format!("unknown mode '{text}': use skip, queue or active"))
}

/// `500ms`, `90s`, `5m`, `2h`, `1d`.
fn parse_delay(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration '{text}': give a whole number followed by ms, s, m, h or d, e.g. \
             90s, 5m, 2h"
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(digits_end);
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE (e.g. tenant=acme), got '{text}'"))?;
    durably::store::validate_label_key(key).map_err(|e| e.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_age(text: &str) -> Result<Duration, String> {
    durably::parse_retention(text).map_err(|e| e.to_string())
}

pub(crate) fn database_error(db: &DbArgs, error: durably::Error) -> CliError {
    CliError::new(format!("database {}: {}", db.display(), describe(&error)))
}

fn no_such_run(db: &DbArgs, id: &str) -> CliError {
    CliError::new(format!(
        "no such run: {id} (list runs with `durably runs {}`)",
        db.flag()
    ))
    .with_code(NOT_FOUND)
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::new(format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("tenant=acme"),
            Ok(("tenant".into(), "acme".into()))
        );
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("tenant").is_err());
        assert!(parse_label("bad key=x").is_err());
    }
}
