//! The libSQL store's round trips: single statements (reads, and writes that are one
//! statement), and transactions as one conditional batch (`BEGIN IMMEDIATE … COMMIT`) whose
//! guard steps refuse the whole write when a fence or a decision no longer holds.
//!
//! No interactive transaction ever spans two requests (docs/libsql.md: `tursodb` shares one
//! connection between all clients and keeps no streams).

use std::time::Duration;

use super::hrana::{
    Batch, BatchResult, HranaClient, HranaError, SqlError, Statement, StepOutcome, StmtResult,
    Value,
};
use crate::error::{Error, Result};
use crate::store::sqlite_sql::SqlArg;
use crate::time::Timestamp;

/// How often a request that provably did not run (or a read) is tried.
const ATTEMPTS: u32 = 3;

/// A value bound to a statement.
pub(super) trait Arg {
    /// The Hrana value.
    fn arg(self) -> Value;
}

impl Arg for Value {
    fn arg(self) -> Value {
        self
    }
}

impl Arg for &str {
    fn arg(self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Arg for String {
    fn arg(self) -> Value {
        Value::Text(self)
    }
}

impl Arg for &String {
    fn arg(self) -> Value {
        Value::Text(self.clone())
    }
}

impl Arg for i64 {
    fn arg(self) -> Value {
        Value::Integer(self)
    }
}

impl Arg for i32 {
    fn arg(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Arg for bool {
    fn arg(self) -> Value {
        Value::Integer(i64::from(self))
    }
}

impl Arg for Timestamp {
    fn arg(self) -> Value {
        Value::Text(self.to_string())
    }
}

impl<T: Arg> Arg for Option<T> {
    fn arg(self) -> Value {
        self.map_or(Value::Null, Arg::arg)
    }
}

impl Arg for &Option<String> {
    fn arg(self) -> Value {
        self.as_deref()
            .map_or(Value::Null, |s| Value::Text(s.to_owned()))
    }
}

impl Arg for SqlArg {
    fn arg(self) -> Value {
        match self {
            SqlArg::Null => Value::Null,
            SqlArg::Integer(i) => Value::Integer(i),
            SqlArg::Text(s) => Value::Text(s),
        }
    }
}

/// A statement with its arguments: `stmt!(sql, a, b, …)`.
macro_rules! stmt {
    ($sql:expr $(, $arg:expr)* $(,)?) => {
        $crate::store::libsql::hrana::Statement::with_args(
            $sql,
            [$($crate::store::libsql::conn::Arg::arg($arg)),*],
        )
    };
}
pub(super) use stmt;

/// `sql` that also returns one row (`RETURNING 1`) when it wrote one: the libSQL form of a
/// SQLite statement whose changed-row count the SQLite store reads (`tursodb` reports none).
pub(super) fn returning_one(sql: &str) -> String {
    format!("{sql} RETURNING 1")
}

/// The error of a guard step that refuses a transaction: `json()` of text that is not JSON
/// fails while evaluating (and, on `tursodb`, rolls the transaction back at once).
const REFUSE: &str = "'refused by a guard of the libSQL store'";

/// Why a transaction did not commit.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The guard with this tag refused it (a fence, a decision that no longer holds).
    Guard(&'static str),
    /// A statement failed on a constraint (a unique index): its index among the statements.
    Constraint(usize, SqlError),
    /// The answer was lost (a timeout, a connection closed mid-answer): the transaction may
    /// or may not have committed. The caller recognises its own write by the ids it chose
    /// (docs/libsql.md), or reports this error.
    Lost(Error),
}

impl Refusal {
    /// The error to report for a refusal the caller does not expect.
    pub(super) fn into_error(self, operation: &'static str) -> Error {
        match self {
            Refusal::Lost(error) => error,
            Refusal::Constraint(_, error) => Error::storage(operation, error),
            Refusal::Guard(tag) => {
                Error::storage(operation, format!("the transaction was refused ({tag})"))
            }
        }
    }
}

/// A write transaction being built: statements and the guards between them.
#[derive(Clone, Debug, Default)]
pub(super) struct Tx {
    statements: Vec<Statement>,
    /// Per statement, the tag of the guard it is.
    guards: Vec<Option<&'static str>>,
}

impl Tx {
    pub(super) fn new() -> Self {
        Tx::default()
    }

    /// Appends a statement; returns its index among the statements.
    pub(super) fn push(&mut self, statement: Statement) -> usize {
        self.statements.push(statement);
        self.guards.push(None);
        self.statements.len() - 1
    }

    /// Appends a guard that refuses the transaction (tag `tag`) when the statement before it
    /// changed no row (the fence of a lease-holder write).
    pub(super) fn guard_changed(&mut self, tag: &'static str) {
        self.guard("changes() > 0", Vec::new(), tag);
    }

    /// Appends a guard that refuses the transaction (tag `tag`) unless the SQL `condition`
    /// (with `args`, numbered from `?1`) holds.
    pub(super) fn guard(&mut self, condition: &str, args: Vec<Value>, tag: &'static str) {
        self.statements.push(Statement::with_args(
            format!("SELECT json(CASE WHEN {condition} THEN '1' ELSE {REFUSE} END)"),
            args,
        ));
        self.guards.push(Some(tag));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// A client of one remote database, with the store's error mapping and retries.
#[derive(Clone, Debug)]
pub(super) struct Db {
    pub(super) client: HranaClient,
}

fn failed(operation: &'static str, error: HranaError) -> Error {
    Error::storage(operation, error)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(20 * u64::from(attempt + 1))
}

impl Db {
    /// Runs one read-only statement (or one idempotent write); retried when the request
    /// failed on the way.
    pub(super) async fn read(
        &self,
        operation: &'static str,
        statement: Statement,
    ) -> Result<StmtResult> {
        let mut attempt = 0;
        loop {
            match self.client.execute(statement.clone()).await {
                Ok(result) => return Ok(result),
                Err(error) if error.sql_error().is_none() && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(failed(operation, error)),
            }
        }
    }

    /// Several reads in one request (a batch without conditions; `tursodb` runs a request
    /// as a whole, so they see one state), retried when the request failed on the way.
    pub(super) async fn reads(
        &self,
        operation: &'static str,
        statements: Vec<Statement>,
    ) -> Result<Vec<StmtResult>> {
        match statements.len() {
            0 => return Ok(Vec::new()),
            1 => {
                let statement = statements.into_iter().next();
                let statement = statement.unwrap_or_else(|| Statement::new("SELECT 1"));
                return Ok(vec![self.read(operation, statement).await?]);
            }
            _ => {}
        }
        let mut batch = Batch::new();
        for statement in statements {
            batch.step(None, statement);
        }
        let count = batch.steps.len();
        let mut attempt = 0;
        let result = loop {
            match self.client.batch(batch.clone()).await {
                Ok(result) => break result,
                Err(error) if attempt + 1 < ATTEMPTS => {
                    let _ = error;
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(failed(operation, error)),
            }
        };
        (0..count)
            .map(|i| match result.step(i) {
                StepOutcome::Ok(r) => Ok(r.clone()),
                StepOutcome::Failed(error) => Err(Error::storage(
                    operation,
                    format!("read {i} failed: {error}"),
                )),
                StepOutcome::Skipped => {
                    Err(Error::storage(operation, format!("read {i} did not run")))
                }
            })
            .collect()
    }

    /// The rows of one read.
    pub(super) async fn rows(
        &self,
        operation: &'static str,
        statement: Statement,
    ) -> Result<Vec<Vec<Value>>> {
        Ok(self.read(operation, statement).await?.rows)
    }

    /// Runs one write statement; retried only when the server provably did not run it.
    pub(super) async fn write(
        &self,
        operation: &'static str,
        statement: Statement,
    ) -> Result<StmtResult> {
        let mut attempt = 0;
        loop {
            match self.client.execute(statement.clone()).await {
                Ok(result) => return Ok(result),
                Err(error) if !error.may_have_run() && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(failed(operation, error)),
            }
        }
    }

    /// [`transaction`](Self::transaction) for a transaction that may run twice with the
    /// effect of once: sent again (a few times) when its answer was lost.
    pub(super) async fn idempotent_transaction(
        &self,
        operation: &'static str,
        tx: Tx,
    ) -> Result<std::result::Result<Vec<StmtResult>, Refusal>> {
        let mut attempt = 0;
        loop {
            match self.transaction(operation, tx.clone()).await? {
                Err(Refusal::Lost(_)) if attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return Ok(outcome),
            }
        }
    }

    /// Runs `tx` as one transaction. `Ok(Ok(results))`: it committed, one result per
    /// statement (guards included); `Ok(Err(refusal))`: a guard or a constraint refused it and
    /// nothing was written; `Err`: any other failure.
    pub(super) async fn transaction(
        &self,
        operation: &'static str,
        tx: Tx,
    ) -> Result<std::result::Result<Vec<StmtResult>, Refusal>> {
        if tx.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let count = tx.statements.len();
        let batch = Batch::transaction(tx.statements);
        let mut attempt = 0;
        let result: BatchResult = loop {
            match self.client.batch(batch.clone()).await {
                // BEGIN refused (another writer holds the database on a server with real
                // concurrency): nothing ran, try again.
                Ok(result)
                    if matches!(result.step(0), StepOutcome::Failed(_))
                        && attempt + 1 < ATTEMPTS * 3 =>
                {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Ok(result) => break result,
                Err(error) if !error.may_have_run() && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) if error.may_have_run() && error.sql_error().is_none() => {
                    return Ok(Err(Refusal::Lost(failed(operation, error))));
                }
                Err(error) => return Err(failed(operation, error)),
            }
        };
        if let StepOutcome::Ok(_) = result.step(count + 1) {
            let results = (1..=count)
                .map(|i| match result.step(i) {
                    StepOutcome::Ok(r) => Ok(r.clone()),
                    _ => Err(Error::storage(
                        operation,
                        format!("statement {i} of a committed transaction has no result"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Ok(results));
        }
        let Some((index, error)) = result.first_error() else {
            return Err(Error::storage(
                operation,
                "the transaction did not commit and the server reported no error",
            ));
        };
        if index >= 1 && index <= count {
            let statement = index - 1;
            if let Some(tag) = tx.guards[statement] {
                return Ok(Err(Refusal::Guard(tag)));
            }
            if is_constraint(error) {
                return Ok(Err(Refusal::Constraint(statement, error.clone())));
            }
        }
        Err(Error::storage(
            operation,
            format!("statement {index} of the transaction failed: {error}"),
        ))
    }
}

/// Whether the server refused a statement on a constraint (unique, primary key).
pub(super) fn is_constraint(error: &SqlError) -> bool {
    error.message.contains("UNIQUE constraint failed")
        || error.message.contains("PRIMARY KEY")
        || error.code.as_deref() == Some("SQLITE_CONSTRAINT")
        || error
            .code
            .as_deref()
            .is_some_and(|c| c.starts_with("SQLITE_CONSTRAINT"))
}

/// One row as read, with typed accessors naming the operation in their errors.
pub(super) struct Row<'a> {
    pub(super) values: &'a [Value],
    pub(super) operation: &'static str,
}

impl<'a> Row<'a> {
    pub(super) fn new(operation: &'static str, values: &'a [Value]) -> Self {
        Row { values, operation }
    }

    fn bad(&self, index: usize, what: &str) -> Error {
        Error::storage(
            self.operation,
            format!(
                "column {index}: expected {what}, found {:?}",
                self.values.get(index)
            ),
        )
    }

    pub(super) fn opt_text(&self, index: usize) -> Result<Option<String>> {
        match self.values.get(index) {
            Some(Value::Null) => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s.clone())),
            Some(Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(Value::Float(f)) => Ok(Some(f.to_string())),
            _ => Err(self.bad(index, "text")),
        }
    }

    pub(super) fn text(&self, index: usize) -> Result<String> {
        self.opt_text(index)?
            .ok_or_else(|| self.bad(index, "text, not NULL"))
    }

    pub(super) fn opt_int(&self, index: usize) -> Result<Option<i64>> {
        match self.values.get(index) {
            Some(Value::Null) => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(Value::Float(f)) if f.fract() == 0.0 => Ok(Some(*f as i64)),
            Some(Value::Text(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| self.bad(index, "an integer")),
            _ => Err(self.bad(index, "an integer")),
        }
    }

    pub(super) fn int(&self, index: usize) -> Result<i64> {
        self.opt_int(index)?
            .ok_or_else(|| self.bad(index, "an integer, not NULL"))
    }

    pub(super) fn boolean(&self, index: usize) -> Result<bool> {
        Ok(self.int(index)? != 0)
    }

    pub(super) fn opt_ts(&self, index: usize) -> Result<Option<Timestamp>> {
        match self.opt_text(index)? {
            None => Ok(None),
            Some(text) => Timestamp::parse(&text)
                .map(Some)
                .ok_or_else(|| self.bad(index, "a timestamp")),
        }
    }

    pub(super) fn ts(&self, index: usize) -> Result<Timestamp> {
        self.opt_ts(index)?
            .ok_or_else(|| self.bad(index, "a timestamp, not NULL"))
    }
}

/// Each row of `rows` through `parse`.
pub(super) fn parse_rows<T>(
    operation: &'static str,
    rows: &[Vec<Value>],
    parse: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(|values| parse(&Row::new(operation, values)))
        .collect()
}

/// The first row of `rows` through `parse`, if any.
pub(super) fn parse_first<T>(
    operation: &'static str,
    rows: &[Vec<Value>],
    parse: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    rows.first()
        .map(|values| parse(&Row::new(operation, values)))
        .transpose()
}

/// The first column of the first row as a boolean (`false` when there is none).
pub(super) fn scalar_bool(operation: &'static str, result: &StmtResult) -> Result<bool> {
    match result.rows.first() {
        Some(values) => Row::new(operation, values).boolean(0),
        None => Ok(false),
    }
}

/// `value` as JSON text.
pub(super) fn to_json(operation: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::storage(operation, e))
}
