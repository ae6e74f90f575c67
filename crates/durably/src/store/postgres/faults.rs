//! Faults: what a failed statement means (transient, permanent, cancelled), retries of writes
//! whose outcome is unknown, and cancelling a dropped read in the server.

use super::*;

/// Tells listening workers (if any) that an operation is being retried after a fault.
pub(super) fn report_fault(
    notices: &Mutex<Option<broadcast::Sender<StoreNotice>>>,
    operation: &'static str,
    error: String,
) {
    send_notice(
        notices,
        StoreNotice::StorageFault {
            operation: operation.to_owned(),
            error,
        },
    );
}

/// Sends a notice to the workers of this process that listen (if any).
pub(super) fn send_notice(
    notices: &Mutex<Option<broadcast::Sender<StoreNotice>>>,
    notice: StoreNotice,
) {
    let slot = notices
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sender) = slot.as_ref() {
        let _ = sender.send(notice);
    }
}

/// Why one attempt failed.
pub(super) enum Fail {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    Other(Error),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(error: tokio_postgres::Error) -> Self {
        Fail::Db(error)
    }
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Fail::Other(error)
    }
}

/// `57014 query_canceled`: `statement_timeout` or a cancel request ended the statement.
pub(super) fn is_query_cancelled(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "57014")
}

/// A pooled connection whose statement is cancelled on the server when the future using it is
/// dropped before [`CancelOnDrop::finished`] (an HTTP client that went away, a timeout): the
/// connection leaves the pool (so that the cancel request cannot reach a later statement of
/// another caller), a task sends the cancel request, then closes the connection. Without it a
/// dropped read ran on to its end, holding a connection and a server process.
pub(super) struct CancelOnDrop {
    pub(super) client: Option<Object>,
    pub(super) tls: MakeRustlsConnect,
}

impl CancelOnDrop {
    pub(super) fn new(client: Object, tls: &MakeRustlsConnect) -> Self {
        CancelOnDrop {
            client: Some(client),
            tls: tls.clone(),
        }
    }

    /// The statement ended: the connection goes back to the pool when dropped.
    pub(super) fn finished(mut self) {
        drop(self.client.take());
    }
}

impl std::ops::Deref for CancelOnDrop {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.client.as_ref().expect("a connection until finished")
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the connection closes with the runtime
        };
        let token = client.cancel_token();
        let detached = Object::take(client);
        let tls = self.tls.clone();
        runtime.spawn(async move {
            if let Err(error) = token.cancel_query(tls).await {
                tracing::debug!(%error, "could not cancel an abandoned PostgreSQL read");
            }
            drop(detached);
        });
    }
}

pub(super) fn db_error_is_transient(error: &tokio_postgres::Error) -> bool {
    if tls_error_is_permanent(error) {
        return false;
    }
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") // connection exception
            || code == "57P01" // admin_shutdown (pg_terminate_backend, fast shutdown)
            || code == "57P02" // crash_shutdown
            || code == "57P03" // cannot_connect_now (starting up)
            || code == "40001" // serialization_failure
            || code == "40P01"; // deadlock_detected
    }
    // No server error: an I/O failure of the socket.
    std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
}

impl Fail {
    pub(super) fn is_transient(&self) -> bool {
        match self {
            Fail::Db(error) => db_error_is_transient(error),
            Fail::Pool(PoolError::Timeout(_)) => true,
            Fail::Pool(
                PoolError::Backend(error) | PoolError::PostCreateHook(HookError::Backend(error)),
            ) => {
                !tls_error_is_permanent(error)
                    && (db_error_is_transient(error) || error.as_db_error().is_none())
            }
            Fail::Pool(_) => false,
            Fail::Other(_) => false,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Fail::Db(error) => db_error_text(error),
            // The pool's own message ("error connecting to server") hides why: add the cause.
            Fail::Pool(
                PoolError::Backend(error) | PoolError::PostCreateHook(HookError::Backend(error)),
            ) => db_error_text(error),
            Fail::Pool(error) => error.to_string(),
            Fail::Other(error) => error.to_string(),
        }
    }

    /// The error of `operation` on the database of `config`. A failure to open a connection
    /// (the server does not answer in time, refuses, or rejects the login) is reported as such,
    /// naming the server, whatever operation needed the connection.
    pub(super) fn into_error(self, operation: &'static str) -> Error {
        match self {
            Fail::Other(error) => error,
            other => Error::storage(operation, other.describe()),
        }
    }

    /// [`Fail::into_error`] for an operation that took a pooled connection of `config`'s
    /// database.
    pub(super) fn into_error_on(
        self,
        operation: &'static str,
        config: &tokio_postgres::Config,
    ) -> Error {
        let server = server_of(config);
        match self {
            Fail::Other(error) => error,
            Fail::Pool(PoolError::Timeout(deadpool_postgres::TimeoutType::Create)) => {
                let within = config
                    .get_connect_timeout()
                    .map(|t| format!(" within {} ms", t.as_millis()))
                    .unwrap_or_default();
                Error::storage(
                    "connect",
                    format!(
                        "cannot connect to PostgreSQL at {server}: no answer{within} (check that \
                         the server is up and the host and port are right; for a slow network \
                         raise the URL's `connect_timeout` or `PostgresOptions::connect_timeout`)"
                    ),
                )
            }
            fail @ Fail::Pool(
                PoolError::Backend(_) | PoolError::PostCreateHook(HookError::Backend(_)),
            ) => Error::storage(
                "connect",
                format!(
                    "cannot connect to PostgreSQL at {server}: {}",
                    fail.describe()
                ),
            ),
            other => Error::storage(operation, other.describe()),
        }
    }
}

/// The server's message (with its SQLSTATE) rather than tokio-postgres' generic "db error".
pub(super) fn db_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match (std::error::Error::source(error), tls_hint(error)) {
            (Some(source), Some(hint)) => format!("{error}: {source} ({hint})"),
            (Some(source), None) => format!("{error}: {source}"),
            (None, _) => error.to_string(),
        },
    }
}

/// `host:port/database` of `config` (every host of a multi-host URL), without credentials.
pub(super) fn server_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => {
                    format!("{}/.s.PGSQL.{port}", path.display())
                }
            }
        })
        .collect();
    let hosts = match hosts.is_empty() {
        true => "localhost:5432".to_owned(),
        false => hosts.join(","),
    };
    match config.get_dbname() {
        Some(db) => format!("{hosts}/{db}"),
        None => hosts,
    }
}
