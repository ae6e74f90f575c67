//! Reading a request: its query pairs and parameters (`runId`, `limit`/`offset`, time
//! bounds), its JSON body, reads bounded by [`HttpOptions::read_timeout`](super::HttpOptions::read_timeout),
//! and the run it names, once the run-access hook allows it.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::Shared;
use super::auth::{Guard, Rejection, RunOperation};
use super::responses::{bad_request, durably_error, error_response};
use crate::run::{Labels, Run};
use crate::time::Timestamp;

/// Decoded query pairs in order (`URLSearchParams` semantics: `+` is a space).
pub(super) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(super) fn parse(query: &str) -> Self {
        Query {
            pairs: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    pub(super) fn first(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `label.<key>=<value>` pairs; a repeated key keeps the last value.
    pub(super) fn labels(&self) -> Labels {
        self.pairs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("label.").map(|k| (k.to_owned(), v.clone())))
            .collect()
    }
}

/// JavaScript's `parseInt(text, 10)` for the non-negative integers of `limit`/`offset`:
/// leading whitespace, an optional sign, then the longest run of digits (`"5abc"` → 5,
/// `"1.5"` → 1). `None` for NaN or a negative number.
fn parse_js_int(text: &str) -> Option<u64> {
    let trimmed = text.trim_start();
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let digits = &digits[..end];
    if digits.is_empty() {
        return None;
    }
    let all_zero = digits.bytes().all(|b| b == b'0');
    if negative && !all_zero {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

pub(super) fn page_param(query: &Query, key: &str) -> Result<Option<u64>, Response> {
    match query.first(key) {
        None | Some("") => Ok(None),
        Some(text) => parse_js_int(text)
            .map(Some)
            .ok_or_else(|| bad_request(&format!("Invalid {key}: must be a non-negative integer"))),
    }
}

/// A time-range bound of `GET /runs` (`createdSince`, `createdBefore`): an RFC 3339 timestamp
/// or milliseconds since the Unix epoch (at most 15 digits). An instant outside the years 0 to
/// 9999 (which no run is created in) counts as the nearest one inside them. Empty or absent:
/// no bound.
pub(super) fn time_param(query: &Query, key: &str) -> Result<Option<Timestamp>, Response> {
    let text = match query.first(key) {
        None | Some("") => return Ok(None),
        Some(text) => text,
    };
    let parsed = if text.bytes().all(|b| b.is_ascii_digit()) {
        (text.len() <= MAX_EPOCH_DIGITS)
            .then(|| text.parse::<i64>().ok().map(Timestamp::from_millis))
            .flatten()
    } else {
        Timestamp::parse(text)
    };
    match parsed {
        Some(at) => Ok(Some(at.clamp(Timestamp::EARLIEST, Timestamp::LATEST))),
        None => {
            let shown: String = text.chars().take(40).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            Err(bad_request(&format!(
                "Invalid {key}: \"{shown}{more}\" must be an RFC 3339 timestamp \
                 (2026-03-29T12:34:56.789Z) or milliseconds since the Unix epoch \
                 (at most {MAX_EPOCH_DIGITS} digits)"
            )))
        }
    }
}

/// The most digits of a time bound in milliseconds since the epoch (the year 9999 has 15).
const MAX_EPOCH_DIGITS: usize = 15;

fn run_id_param(query: &Query) -> Result<String, Response> {
    match query.first("runId") {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(bad_request("runId query parameter is required")),
    }
}

/// A read bounded by [`HttpOptions::read_timeout`](super::HttpOptions::read_timeout): dropped
/// (which cancels it in the database) and answered with [`Error::Timeout`](crate::Error::Timeout)
/// once the time is up.
pub(super) async fn within<T>(
    shared: &Shared,
    operation: &str,
    read: impl Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    let timeout = shared.options.read_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(crate::store::read_timeout(operation, timeout)))
}

/// Loads the run named by `runId` and asks the run-access hook.
pub(super) async fn accessible_run(
    shared: &Shared,
    guard: &dyn Guard,
    query: &Query,
    operation: RunOperation,
) -> Result<Run, Response> {
    let run_id = run_id_param(query)?;
    let run = within(shared, "get_run", shared.durably.get_run(&run_id))
        .await
        .map_err(durably_error)?
        .ok_or_else(|| error_response(StatusCode::NOT_FOUND, "Run not found"))?;
    guard
        .on_run_access(&run, operation)
        .await
        .map_err(Rejection::into_response)?;
    Ok(run)
}

pub(super) async fn read_body(shared: &Shared, body: Body) -> Result<Value, Response> {
    let limit = shared.options.body_limit;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body too large: the limit is {limit} bytes"),
        )
    };
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("Invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::parse_js_int;

    #[test]
    fn parse_int_follows_javascript() {
        assert_eq!(parse_js_int("5"), Some(5));
        assert_eq!(parse_js_int("5abc"), Some(5));
        assert_eq!(parse_js_int("1.5"), Some(1));
        assert_eq!(parse_js_int(" 7"), Some(7));
        assert_eq!(parse_js_int("+3"), Some(3));
        assert_eq!(parse_js_int("0"), Some(0));
        assert_eq!(parse_js_int("-0"), Some(0));
        assert_eq!(parse_js_int("-1"), None);
        assert_eq!(parse_js_int("abc"), None);
        assert_eq!(parse_js_int("-"), None);
    }
}
