//! The one public error type of durably.
//!
//! The kinds mirror the upstream TypeScript library (`NotFoundError`, `ValidationError`,
//! `ConflictError`, `CancelledError`, `LeaseLostError`) plus [`Error::Storage`] for backend failures,
//! and [`Error::Step`] / [`Error::Job`] for errors of a job's own code. Over HTTP
//! (`durably::http`, feature `http`) `NotFound` is a 404, `Validation` a 400, `Conflict` a 409,
//! a read that timed out a 503 and the rest a 500.

/// The error of a step's function: any error, boxed. `?` converts every
/// `std::error::Error + Send + Sync` (an I/O error, a `reqwest` or `sqlx` error, a
/// `durably::Error`) and text (`Err("out of stock".into())`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a step's function returns ([`StepContext::run`](crate::StepContext::run)): a value, or
/// any error ([`BoxError`]). Handy in the signature of a helper a step calls:
///
/// ```
/// async fn charge(order_id: &str) -> durably::StepResult<String> {
///     let amount: u64 = "1200".parse()?; // any std error converts
///     Ok(format!("{order_id}:{amount}"))
/// }
/// ```
pub type StepResult<T> = std::result::Result<T, BoxError>;

/// Result alias used throughout durably.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in durably. Every message names the offending id or value
/// (over HTTP, a few keep upstream's exact wording instead, e.g. `Run not found`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A run or job does not exist (`Run not found: <id>`, `Unknown job: <name>`).
    #[error("{0}")]
    NotFound(String),
    /// Bad input: invalid job input, labels, keys or options. Nothing was stored.
    #[error("{0}")]
    Validation(String),
    /// The operation conflicts with the run's current state or another run.
    #[error("{0}")]
    Conflict(String),
    /// The run was cancelled (returned by waits and by `step.run` inside a cancelled run).
    #[error("Run was cancelled: {run_id}")]
    Cancelled {
        /// The cancelled run.
        run_id: String,
    },
    /// This worker no longer holds the run's lease; another owner (or nobody) has it now.
    #[error("Lease ownership was lost: {run_id}")]
    LeaseLost {
        /// The run whose lease was lost.
        run_id: String,
    },
    /// A step's function returned an error (from [`StepContext::run`](crate::StepContext::run),
    /// after the failed step was recorded). It displays as the step's own error, unchanged:
    /// that text is the step's stored error, and the run's when the job returns it.
    #[error("{source}")]
    Step {
        /// The step's name.
        name: String,
        /// The error the step's function returned.
        source: BoxError,
    },
    /// An error of a job's own code outside a step, for job functions that return
    /// `durably::Error` (`Err(Error::Job("order is empty".into()))`). Its message becomes the
    /// run's stored error.
    #[error("{0}")]
    Job(BoxError),
    /// The run awaits a durable wait that is still pending
    /// ([`StepContext::wait_for`](crate::StepContext::wait_for)): the job function should
    /// return this error (`?`). The
    /// run is suspended (`waiting`, without lease or slot) whatever the function returns, and
    /// every later step operation of this execution returns the same error.
    #[error("Durably execution suspended: run {run_id} waits for {wait_id}")]
    Suspended {
        /// The suspended run.
        run_id: String,
        /// The wait it is suspended on.
        wait_id: String,
    },
    /// A waited-for run ended in `failed`; the message is the run's stored error.
    #[error("{message}")]
    RunFailed {
        /// The failed run.
        run_id: String,
        /// The run's error message (`Run failed` when none was stored).
        message: String,
    },
    /// A child run of an invoke ([`StepContext::invoke`](crate::StepContext::invoke)) failed
    /// or was cancelled: the first such child in input order, with its stored error.
    #[error("child run {run_id} of invoke \"{name}\" {status}: {message}")]
    Child {
        /// The invoke's name.
        name: String,
        /// The child run.
        run_id: String,
        /// How it ended (`failed` or `cancelled`).
        status: crate::run::RunStatus,
        /// The child's error message (`cancelled` for a cancelled child without one).
        message: String,
    },
    /// A signal reached a durable wait whose deadline had passed: the wait is resolved as a
    /// timeout (`Wait expired: <wait id>`; upstream's `WaitExpiredError`, HTTP 410).
    #[error("Wait expired: {wait_id}")]
    WaitExpired {
        /// The expired wait.
        wait_id: String,
    },
    /// A wait gave up (`waitForRun timeout after 100ms`; the run itself is unaffected), or a
    /// read bounded in time was cancelled (`Store::get_runs_within`).
    #[error("{0}")]
    Timeout(String),
    /// Invalid configuration or registration (bad `retain_runs`, duplicate job definition, …).
    #[error("{0}")]
    Config(String),
    /// The storage backend failed (I/O, SQL, connection). The message says which operation.
    #[error("storage error during {operation}: {source}")]
    Storage {
        /// The store operation that failed, e.g. `enqueue`.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// `true` for [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }

    /// `true` for [`Error::Suspended`].
    pub fn is_suspended(&self) -> bool {
        matches!(self, Error::Suspended { .. })
    }

    /// `true` for [`Error::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Error::LeaseLost { .. })
    }

    /// An error of a job's own code outside a step, as [`Error::Job`]: for `?` on another error
    /// type in a job function (`input.parse().map_err(Error::job)?`). A `durably::Error`
    /// (boxed or not) stays what it is, so a suspension or a cancellation passed through here
    /// keeps working.
    pub fn job(error: impl Into<BoxError>) -> Self {
        match error.into().downcast::<Error>() {
            Ok(error) => *error,
            Err(other) => Error::Job(other),
        }
    }

    /// Wraps a backend error as [`Error::Storage`] for the named operation; a table of
    /// durably's that does not exist (the schema was never created) becomes [`Error::Config`]
    /// saying to call `init()`.
    pub fn storage(operation: &'static str, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        let text = source.to_string();
        if missing_durably_table(&text) {
            return Error::Config(format!(
                "The database is not set up for durably ({text}): call `init()` (or \
                 `migrate()`) on the Durably instance once at startup, before triggering or \
                 reading runs, or run `durably migrate --db <database>`"
            ));
        }
        Error::Storage { operation, source }
    }

    pub(crate) fn run_not_found(run_id: &str) -> Self {
        Error::NotFound(format!("Run not found: {run_id}"))
    }
}

/// Whether a backend's error text says one of durably's tables does not exist (SQLite and
/// libSQL: `no such table: durably_runs`; PostgreSQL: `relation "durably_runs" does not
/// exist`).
fn missing_durably_table(text: &str) -> bool {
    text.contains("no such table: durably_")
        || (text.contains("relation \"durably_") && text.contains("does not exist"))
}
