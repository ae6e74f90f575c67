//! The results of statements and batches.

use super::*;

/// A column of a result.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Column {
    /// The column's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The declared type, when the column is a table's.
    #[serde(default)]
    pub decltype: Option<String>,
}

/// What one statement returned.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StmtResult {
    /// The columns.
    #[serde(default)]
    pub cols: Vec<Column>,
    /// The rows (empty unless the statement's `want_rows`).
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// Rows changed, as the server counts them. `tursodb` 0.7 always reports 0: use
    /// `RETURNING` or `changes()` to tell whether a write matched (docs/libsql.md).
    #[serde(default)]
    pub affected_row_count: u64,
    /// The rowid of the last insert, when the server reports it.
    #[serde(default, deserialize_with = "optional_integer")]
    pub last_insert_rowid: Option<i64>,
}

impl StmtResult {
    /// The first column of the first row, if any.
    pub fn scalar(&self) -> Option<&Value> {
        self.rows.first().and_then(|row| row.first())
    }
}

/// An integer written as a string (the protocol) or a number.
pub(super) fn optional_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("bad integer {s:?}"))),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("bad integer {n}"))),
        Some(other) => Err(D::Error::custom(format!("bad integer {other}"))),
    }
}

/// What a batch returned: per step, a result (it ran and succeeded), an error (it ran and
/// failed), or neither (its condition did not hold).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BatchResult {
    /// Per step, its result if it succeeded.
    pub step_results: Vec<Option<StmtResult>>,
    /// Per step, its error if it failed.
    pub step_errors: Vec<Option<SqlError>>,
}

/// The outcome of one batch step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome<'a> {
    /// It ran and succeeded.
    Ok(&'a StmtResult),
    /// It ran and failed.
    Failed(&'a SqlError),
    /// Its condition did not hold.
    Skipped,
}

impl BatchResult {
    /// The outcome of step `index` (skipped when the batch has no such step).
    pub fn step(&self, index: usize) -> StepOutcome<'_> {
        if let Some(Some(error)) = self.step_errors.get(index) {
            return StepOutcome::Failed(error);
        }
        match self.step_results.get(index) {
            Some(Some(result)) => StepOutcome::Ok(result),
            _ => StepOutcome::Skipped,
        }
    }

    /// The first step that failed, with its index.
    pub fn first_error(&self) -> Option<(usize, &SqlError)> {
        self.step_errors
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    }

    /// The results of the statements of a [`Batch::transaction`] once it committed, in order;
    /// its first error otherwise (the transaction was rolled back, or never began).
    pub fn transaction(&self) -> Result<Vec<&StmtResult>, SqlError> {
        let steps = self.step_results.len();
        let commit = steps.checked_sub(2);
        match commit.map(|commit| self.step(commit)) {
            Some(StepOutcome::Ok(_)) => Ok(self.step_results[1..steps - 2]
                .iter()
                .map(|r| r.as_ref().expect("committed: every statement succeeded"))
                .collect()),
            _ => Err(self
                .first_error()
                .map(|(_, e)| e.clone())
                .unwrap_or(SqlError {
                    message: "the transaction did not commit".to_owned(),
                    code: None,
                })),
        }
    }
}
