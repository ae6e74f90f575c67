//! What went wrong talking to a libSQL server.

use super::*;

/// What went wrong talking to a libSQL server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HranaError {
    /// The URL is not one the client can use.
    #[error("invalid libSQL URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No TCP connection to the server (refused, unreachable, unknown host).
    #[error("cannot connect to the libSQL server at {url}: {source}")]
    Connect {
        /// The server's base URL.
        url: String,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, not a TLS server).
    #[error("TLS handshake with the libSQL server at {url} failed: {source}")]
    Tls {
        /// The server's base URL.
        url: String,
        /// The handshake's error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the request's credentials (HTTP 401 or 403): a missing, wrong or
    /// expired auth token.
    #[error(
        "the libSQL server at {url} refused the auth token (HTTP {status}{}): {body}",
        if *.token_sent { "" } else { ", no token was sent" }
    )]
    Unauthorized {
        /// The server's base URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// Whether the request carried a token.
        token_sent: bool,
        /// The start of the server's answer.
        body: String,
    },
    /// Any other HTTP status than 200.
    #[error("the libSQL server at {url} answered HTTP {status}{}: {body}", status_hint(*.status))]
    Http {
        /// The server's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the server's answer.
        body: String,
    },
    /// No complete answer within the client's timeout. The request may have run.
    #[error("the libSQL server at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The server's base URL.
        url: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// The HTTP exchange failed after the connection was made (reset, closed mid-answer).
    #[error("the HTTP exchange with the libSQL server at {url} failed: {source}")]
    Transport {
        /// The server's base URL.
        url: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The answer is not a Hrana pipeline response this client understands.
    #[error("malformed Hrana answer from the libSQL server at {url}: {reason}")]
    Protocol {
        /// The server's base URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The statement failed on the server (syntax, constraint, missing table, …).
    #[error("SQL error from the libSQL server: {error} (statement: {sql})")]
    Sql {
        /// The server's error.
        error: SqlError,
        /// The start of the statement's text.
        sql: String,
    },
    /// Asking the server which Hrana version it speaks (`GET v3`) failed: it did not answer in
    /// time, or the exchange broke. No pipeline was sent.
    #[error(
        "cannot find out which Hrana version the libSQL server at {url} speaks (GET v3): {source}"
    )]
    Negotiation {
        /// The server's base URL.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<HranaError>,
    },
    /// A value the protocol cannot carry (a float that is NaN or infinite).
    #[error("cannot encode the Hrana request: {0}")]
    Encode(String),
}

impl HranaError {
    /// Whether the server may have executed the request: `false` when it provably did not (the
    /// URL was wrong, no connection or TLS session was made, the server refused the token or
    /// the request before running it). A request for which this is `true` and that is not
    /// idempotent must not be retried blindly: its writes must be recognisable (docs/libsql.md).
    pub fn may_have_run(&self) -> bool {
        match self {
            HranaError::InvalidUrl { .. }
            | HranaError::Connect { .. }
            | HranaError::Tls { .. }
            | HranaError::Unauthorized { .. }
            | HranaError::Negotiation { .. }
            | HranaError::Encode(_) => false,
            // A 4xx other than a timeout is a refusal before execution; a 5xx may come after.
            HranaError::Http { status, .. } => !(400..500).contains(status) || *status == 408,
            HranaError::Timeout { .. }
            | HranaError::Transport { .. }
            | HranaError::Protocol { .. } => true,
            // The server ran the request and reports the statement's failure.
            HranaError::Sql { .. } => true,
        }
    }

    /// The server's SQL error, for [`HranaError::Sql`].
    pub fn sql_error(&self) -> Option<&SqlError> {
        match self {
            HranaError::Sql { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub(super) fn status_hint(status: u16) -> &'static str {
    match status {
        404 => " (no Hrana pipeline endpoint at this URL: is it the database's base URL?)",
        _ => "",
    }
}

/// The error of one statement, as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("{message}{}", code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
pub struct SqlError {
    /// The server's message, e.g. `UNIQUE constraint failed: t.a`.
    pub message: String,
    /// The server's code, e.g. `SQLITE_CONSTRAINT` (sqld) or `EXECUTE_ERROR` (tursodb).
    #[serde(default)]
    pub code: Option<String>,
}
