//! Bounds on what one run may carry and on what one query may ask, and the one place where
//! every entry point (triggers, batch triggers, run lookups, run listings, over the library,
//! HTTP and the command line) checks text before any backend sees it.
//!
//! Every check here fails with [`Error::Validation`] (HTTP 400) naming the field, the limit and
//! what to do, and runs before the store is touched, so a refused request changes nothing and
//! every backend refuses the same input with the same message.
//!
//! # Text a backend cannot store
//!
//! PostgreSQL `text` cannot hold a NUL byte (`U+0000`), and SQLite compares text that holds one
//! differently, so a NUL in a job name, run id, idempotency or concurrency key, label key or
//! label value (stored or used as a filter) is refused everywhere. Rust strings are always valid
//! UTF-8, and a JSON body with a lone surrogate (`"\ud800"`) is refused as invalid JSON before
//! it becomes one, so NUL is the only character refused.
//!
//! A run's *input* may contain `"\u0000"` inside its JSON strings: input is stored as JSON text,
//! where the character stays escaped, so every backend stores and returns it unchanged (tested
//! on each). Step names, log messages and errors written by job code are not checked here.

use crate::error::{Error, Result};
use crate::run::{Labels, RunFilter, TriggerOptions};
use crate::store::validate_label_key;

/// Bounds on what one run may carry and one listing may ask, the same on every backend. Set them
/// with [`DurablyBuilder::limits`](crate::DurablyBuilder::limits); the defaults are generous for
/// applications and keep one request from costing more than a few milliseconds of database time
/// or a few kilobytes of rows:
///
/// | limit | default | why |
/// |---|---|---|
/// | [`max_label_filters`](Self::max_label_filters) | 32 | a listing's `label.<key>=<value>` conditions; queries stay linear in them, but a tenant, an environment and a handful of business keys rarely exceed ten |
/// | [`max_job_name_filters`](Self::max_job_name_filters) | 100 | a listing's `jobName` alternatives: every job of a large application |
/// | [`max_labels_per_run`](Self::max_labels_per_run) | 64 | each label is a row of `durably_run_labels`, written with the run and read by every filter |
/// | [`max_label_key_bytes`](Self::max_label_key_bytes) | 256 | Kubernetes-style prefixed keys (`app.kubernetes.io/name`) fit with room to spare |
/// | [`max_label_value_bytes`](Self::max_label_value_bytes) | 1,024 | ids, names, URLs; labels are indexed for filtering, not a place for documents (use the input) |
/// | [`max_key_bytes`](Self::max_key_bytes) | 256 | idempotency and concurrency keys are indexed: a hash, a UUID or a composed business key fits |
///
/// A run over a bound is refused at trigger time with [`Error::Validation`] (HTTP 400) and
/// nothing is stored; a listing over a bound is refused the same way before any query runs. A
/// label filter is held to the label bounds too (it can only match what a run can carry).
///
/// ```
/// use durably::Limits;
/// let limits = Limits::new().max_label_filters(8).max_labels_per_run(16);
/// assert_eq!(limits.max_label_filters, 8);
/// assert_eq!(limits.max_key_bytes, 256);
/// # let _ = durably::Durably::builder().sqlite(":memory:").limits(limits).build().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Label filters one listing may combine (`RunFilter::labels`, `label.<key>` over HTTP,
    /// `--label` of `durably runs`). Default 32.
    pub max_label_filters: usize,
    /// Job names one listing may match (`RunFilter::job_names`, `jobName` over HTTP). Default
    /// 100.
    pub max_job_name_filters: usize,
    /// Labels one run may carry. Default 64.
    pub max_labels_per_run: usize,
    /// Bytes (UTF-8) of one label key. Default 256.
    pub max_label_key_bytes: usize,
    /// Bytes (UTF-8) of one label value. Default 1,024.
    pub max_label_value_bytes: usize,
    /// Bytes (UTF-8) of an idempotency or concurrency key. Default 256.
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_label_filters: 32,
            max_job_name_filters: 100,
            max_labels_per_run: 64,
            max_label_key_bytes: 256,
            max_label_value_bytes: 1024,
            max_key_bytes: 256,
        }
    }
}

impl Limits {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`max_label_filters`](Self::max_label_filters).
    pub fn max_label_filters(mut self, filters: usize) -> Self {
        self.max_label_filters = filters;
        self
    }

    /// Sets [`max_job_name_filters`](Self::max_job_name_filters).
    pub fn max_job_name_filters(mut self, names: usize) -> Self {
        self.max_job_name_filters = names;
        self
    }

    /// Sets [`max_labels_per_run`](Self::max_labels_per_run).
    pub fn max_labels_per_run(mut self, labels: usize) -> Self {
        self.max_labels_per_run = labels;
        self
    }

    /// Sets [`max_label_key_bytes`](Self::max_label_key_bytes).
    pub fn max_label_key_bytes(mut self, bytes: usize) -> Self {
        self.max_label_key_bytes = bytes;
        self
    }

    /// Sets [`max_label_value_bytes`](Self::max_label_value_bytes).
    pub fn max_label_value_bytes(mut self, bytes: usize) -> Self {
        self.max_label_value_bytes = bytes;
        self
    }

    /// Sets [`max_key_bytes`](Self::max_key_bytes).
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Checks a trigger's job name, keys and labels (`at` names the batch item, if any). The
    /// label key pattern is checked by the store, after the idempotency lookup, as upstream
    /// does; everything a backend could not store is refused here.
    pub(crate) fn check_trigger(
        &self,
        job_name: &str,
        options: &TriggerOptions,
        at: &dyn Fn(String) -> String,
    ) -> Result<()> {
        check_text("jobName", job_name).map_err(|e| relabel(e, at))?;
        for (field, key) in [
            ("idempotencyKey", &options.idempotency_key),
            ("concurrencyKey", &options.concurrency_key),
        ] {
            if let Some(key) = key {
                check_text(field, key).map_err(|e| relabel(e, at))?;
                if key.len() > self.max_key_bytes {
                    return Err(Error::Validation(at(format!(
                        "{field} is {} bytes long; the limit is {} bytes (Limits::max_key_bytes): \
                         use a shorter key, e.g. a hash of it",
                        key.len(),
                        self.max_key_bytes
                    ))));
                }
            }
        }
        if let Some(labels) = &options.labels {
            if labels.len() > self.max_labels_per_run {
                return Err(Error::Validation(at(format!(
                    "labels: {} labels given; a run may carry at most {} (Limits::max_labels_per_run): \
                     put the rest in the input",
                    labels.len(),
                    self.max_labels_per_run
                ))));
            }
            self.check_labels(labels, "label")
                .map_err(|e| relabel(e, at))?;
            // The key format too, before the store's idempotency lookup: a request with a bad
            // key is refused even when its idempotency key names an existing run.
            for key in labels.keys() {
                validate_label_key(key).map_err(|e| relabel(e, at))?;
            }
        }
        Ok(())
    }

    /// Checks a listing's filter: how many job names and labels it combines, and their text.
    pub(crate) fn check_filter(&self, filter: &RunFilter) -> Result<()> {
        if filter.labels.len() > self.max_label_filters {
            return Err(Error::Validation(format!(
                "Too many label filters: {} given; a query may combine at most {} \
                 (Limits::max_label_filters): filter on fewer labels",
                filter.labels.len(),
                self.max_label_filters
            )));
        }
        if filter.job_names.len() > self.max_job_name_filters {
            return Err(Error::Validation(format!(
                "Too many jobName filters: {} given; a query may match at most {} job names \
                 (Limits::max_job_name_filters)",
                filter.job_names.len(),
                self.max_job_name_filters
            )));
        }
        for name in &filter.job_names {
            check_text("jobName", name)?;
        }
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        self.check_labels(&filter.labels, "label filter")
    }

    fn check_labels(&self, labels: &Labels, what: &str) -> Result<()> {
        for (key, value) in labels {
            check_text(&format!("{what} key"), key)?;
            check_text(&format!("{what} \"{key}\""), value)?;
            if key.len() > self.max_label_key_bytes {
                return Err(Error::Validation(format!(
                    "Invalid {what} key \"{}…\": {} bytes long; the limit is {} bytes \
                     (Limits::max_label_key_bytes)",
                    prefix(key),
                    key.len(),
                    self.max_label_key_bytes
                )));
            }
            if value.len() > self.max_label_value_bytes {
                return Err(Error::Validation(format!(
                    "Invalid {what} \"{key}\": its value is {} bytes long; the limit is {} bytes \
                     (Limits::max_label_value_bytes): put long values in the input",
                    value.len(),
                    self.max_label_value_bytes
                )));
            }
        }
        Ok(())
    }
}

/// Refuses a run id that no backend can look up alike (one with a NUL byte). Such an id can
/// never name a run, but PostgreSQL fails on it and SQLite finds nothing: both now answer the
/// same [`Error::Validation`].
pub(crate) fn check_run_id(id: &str) -> Result<()> {
    check_text("runId", id)
}

/// Refuses text with a NUL byte (PostgreSQL `text` cannot hold one).
pub(crate) fn check_text(field: &str, text: &str) -> Result<()> {
    match text.find('\0') {
        None => Ok(()),
        Some(at) => Err(Error::Validation(format!(
            "Invalid {field}: it contains a NUL character (U+0000) at byte {at}, which cannot be \
             stored; remove it"
        ))),
    }
}

fn relabel(error: Error, at: &dyn Fn(String) -> String) -> Error {
    match error {
        Error::Validation(message) => Error::Validation(at(message)),
        other => other,
    }
}

/// The first few characters of an over-long key, for messages.
fn prefix(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(32)
        .map(|(at, _)| at)
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_with_its_position() {
        let error = check_text("runId", "ab\0c").unwrap_err().to_string();
        assert!(
            error.contains("runId") && error.contains("byte 2"),
            "{error}"
        );
        assert!(check_text("runId", "abc").is_ok());
    }

    #[test]
    fn bounds_name_the_limit() {
        let limits = Limits::new().max_labels_per_run(1).max_key_bytes(3);
        let options = TriggerOptions::new().label("a", "1").label("b", "2");
        let error = limits
            .check_trigger("job", &options, &|m| m)
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_labels_per_run"), "{error}");
        let options = TriggerOptions::new().idempotency_key("abcd");
        let error = limits
            .check_trigger("job", &options, &|m| format!("{m} at index 3"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("max_key_bytes") && error.ends_with("at index 3"),
            "{error}"
        );
    }
}
