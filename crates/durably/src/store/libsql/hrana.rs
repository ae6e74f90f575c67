//! A compact client of libSQL's Hrana protocol over HTTP (version 2, JSON): the remote
//! database of Turso, `sqld` (libsql-server) and `tursodb --sync-server`.
//!
//! One HTTP request carries a *pipeline* (`POST {base}/v2/pipeline`): a list of stream
//! requests, `execute` (one statement) and `batch` (statements with step conditions), run in
//! order on one server-side stream. A server that keeps the stream open between requests answers
//! with a *baton*, which the next request of the stream sends back ([`HranaStream`]); a server
//! that does not (`tursodb`) answers `baton: null` and every request is a stream of its own.
//!
//! - URLs: `libsql://host` (HTTPS), `https://host[:port][/prefix]`, `http://host[:port]`, with
//!   libsql-client's query parameters `authToken=` and `tls=0|1`; an auth token is sent as
//!   `Authorization: Bearer <token>`.
//! - Values ([`Value`]): null, 64-bit integers (sent as strings, as the protocol wants), finite
//!   floats, text and blobs (base64). Positional arguments only (`?`, `?N`): named arguments are
//!   not bound by `tursodb` (docs/libsql.md).
//! - HTTP/1.1 by hyper's connection-level client, TLS by rustls (roots from the system and
//!   webpki-roots); idle keep-alive connections are reused, and a request that could not be
//!   written on a reused connection is sent again on a fresh one (it never reached the server).
//! - Every request has a deadline ([`HranaClient::with_timeout`]); errors ([`HranaError`]) say
//!   what was wrong and whether the request may have reached the server
//!   ([`HranaError::may_have_run`]), which decides whether a retry can double a write.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::ser::{Error as _, SerializeMap as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The deadline of one HTTP request unless [`HranaClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections kept per client.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// How much of an unexpected HTTP body an error quotes.
const QUOTED_BODY: usize = 500;

// ---------------------------------------------------------------------------------------------
// Errors

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

fn status_hint(status: u16) -> &'static str {
    match status {
        404 => " (no Hrana v2 endpoint at this URL: is it the database's base URL?)",
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

// ---------------------------------------------------------------------------------------------
// URLs

/// Where a client sends its pipelines: scheme, host, port and path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    /// The host name or IP address (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// The path before `/v2/pipeline`: empty or `/a/b` (no trailing slash).
    prefix: String,
}

impl Endpoint {
    /// Parses a libSQL URL: `libsql://` (HTTPS unless `tls=0`), `https://` or `http://`, with
    /// optional port and path prefix, and the query parameters `authToken` and `tls` of
    /// libsql-client. Returns the endpoint and the URL's auth token, if any.
    pub fn parse(url: &str) -> Result<(Endpoint, Option<String>), HranaError> {
        let invalid = |reason: &str| HranaError::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected libsql://, https:// or http://"))?;
        let mut tls = match scheme.to_ascii_lowercase().as_str() {
            "libsql" | "https" => true,
            "http" => false,
            "ws" | "wss" => {
                return Err(invalid(
                    "Hrana over WebSocket is not supported: use libsql://, https:// or http://",
                ));
            }
            _ => return Err(invalid("expected libsql://, https:// or http://")),
        };
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        if !fragment.is_empty() {
            return Err(invalid("a URL fragment (#…) has no meaning here"));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported: pass the auth token separately",
            ));
        }
        let mut token = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "authToken" => token = Some(value.to_owned()).filter(|t| !t.is_empty()),
                "tls" if scheme.eq_ignore_ascii_case("libsql") => match value {
                    "0" => tls = false,
                    "1" => tls = true,
                    _ => return Err(invalid("tls= must be 0 or 1")),
                },
                "tls" => return Err(invalid("tls= is only meaningful with libsql://")),
                _ => return Err(invalid(&format!("unknown query parameter {key:?}"))),
            }
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed [ in the IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("expected :port after the IPv6 address"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(&format!("bad port {p:?}")))?,
            None if tls => 443,
            None => 80,
        };
        let prefix = path.trim_end_matches('/').to_owned();
        Ok((
            Endpoint {
                tls,
                host: host.to_owned(),
                port,
                prefix,
            },
            token,
        ))
    }

    /// Whether requests go over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The host, as a `Host` header and a URL write it.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn pipeline_path(&self) -> String {
        format!("{}/v2/pipeline", self.prefix)
    }
}

impl fmt::Display for Endpoint {
    /// The base URL, `https://host[:port][/prefix]` (never a token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

/// `url` without the value of an `authToken` parameter, for error messages.
fn redact(url: &str) -> String {
    match url.find("authToken=") {
        Some(i) => {
            let start = i + "authToken=".len();
            let end = url[start..].find('&').map_or(url.len(), |j| start + j);
            format!("{}***{}", &url[..start], &url[end..])
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Values, statements, batches

/// A value bound to a statement or read from a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (a decimal string on the wire).
    Integer(i64),
    /// A finite double.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes (base64 on the wire).
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Integer(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Self {
        Value::Blob(value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// Blobs are sent padded (what sqld writes); padded and unpadded base64 are read (tursodb
/// writes it unpadded).
const BASE64_OUT: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const BASE64_IN: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        match self {
            Value::Null => map.serialize_entry("type", "null")?,
            Value::Integer(i) => {
                map.serialize_entry("type", "integer")?;
                map.serialize_entry("value", &i.to_string())?;
            }
            Value::Float(f) => {
                if !f.is_finite() {
                    return Err(S::Error::custom(format!(
                        "the float {f} has no Hrana encoding (NaN and infinities are not JSON numbers)"
                    )));
                }
                map.serialize_entry("type", "float")?;
                map.serialize_entry("value", f)?;
            }
            Value::Text(s) => {
                map.serialize_entry("type", "text")?;
                map.serialize_entry("value", s)?;
            }
            Value::Blob(b) => {
                map.serialize_entry("type", "blob")?;
                map.serialize_entry("base64", &BASE64_OUT.encode(b))?;
            }
        }
        map.end()
    }
}

/// A value as the wire has it, before it is checked.
#[derive(Deserialize)]
struct WireValue {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    base64: Option<String>,
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = WireValue::deserialize(deserializer)?;
        let missing = || D::Error::custom(format!("a {} value without its value", wire.kind));
        Ok(match wire.kind.as_str() {
            "null" => Value::Null,
            "integer" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::String(s) => Value::Integer(
                    s.parse()
                        .map_err(|_| D::Error::custom(format!("bad integer {s:?}")))?,
                ),
                serde_json::Value::Number(n) => Value::Integer(
                    n.as_i64()
                        .ok_or_else(|| D::Error::custom(format!("bad integer {n}")))?,
                ),
                other => return Err(D::Error::custom(format!("bad integer {other}"))),
            },
            "float" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::Number(n) => Value::Float(
                    n.as_f64()
                        .ok_or_else(|| D::Error::custom(format!("bad float {n}")))?,
                ),
                other => return Err(D::Error::custom(format!("bad float {other}"))),
            },
            "text" => match wire.value.ok_or_else(missing)? {
                serde_json::Value::String(s) => Value::Text(s),
                other => return Err(D::Error::custom(format!("bad text {other}"))),
            },
            "blob" => {
                let encoded = wire.base64.ok_or_else(missing)?;
                Value::Blob(
                    BASE64_IN
                        .decode(&encoded)
                        .map_err(|e| D::Error::custom(format!("bad base64 blob: {e}")))?,
                )
            }
            other => return Err(D::Error::custom(format!("unknown value type {other:?}"))),
        })
    }
}

/// One SQL statement with its positional arguments (`?` or `?N`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Statement {
    /// The SQL text: one statement.
    pub sql: String,
    /// The arguments, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    /// Whether the server should return the rows (default `true`).
    pub want_rows: bool,
}

impl Statement {
    /// A statement without arguments.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            args: Vec::new(),
            want_rows: true,
        }
    }

    /// A statement with arguments.
    pub fn with_args(sql: impl Into<String>, args: impl IntoIterator<Item = Value>) -> Self {
        Statement {
            args: args.into_iter().collect(),
            ..Statement::new(sql)
        }
    }

    /// Adds the next argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement::new(sql)
    }
}

/// When a batch step runs, from the outcome of earlier steps (indexes into the batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Condition {
    /// The step ran and succeeded.
    Ok {
        /// The earlier step.
        step: usize,
    },
    /// The step ran and failed.
    Error {
        /// The earlier step.
        step: usize,
    },
    /// The condition does not hold (a skipped step is neither `Ok` nor `Error`).
    Not {
        /// The negated condition.
        cond: Box<Condition>,
    },
    /// All conditions hold.
    And {
        /// The conditions.
        conds: Vec<Condition>,
    },
    /// Any condition holds.
    Or {
        /// The conditions.
        conds: Vec<Condition>,
    },
    /// The connection is in autocommit mode (no transaction open).
    IsAutocommit,
}

impl Condition {
    /// Step `step` succeeded.
    pub fn ok(step: usize) -> Self {
        Condition::Ok { step }
    }

    /// Step `step` failed.
    pub fn error(step: usize) -> Self {
        Condition::Error { step }
    }

    /// The negation of `cond`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(cond: Condition) -> Self {
        Condition::Not {
            cond: Box::new(cond),
        }
    }

    /// All of `conds`.
    pub fn and(conds: impl IntoIterator<Item = Condition>) -> Self {
        Condition::And {
            conds: conds.into_iter().collect(),
        }
    }

    /// Any of `conds`.
    pub fn or(conds: impl IntoIterator<Item = Condition>) -> Self {
        Condition::Or {
            conds: conds.into_iter().collect(),
        }
    }
}

/// One step of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchStep {
    /// Runs the step only when this holds (always when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// The statement.
    pub stmt: Statement,
}

/// Statements run in order in one request, each under an optional [`Condition`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Batch {
    /// The steps.
    pub steps: Vec<BatchStep>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Appends a step; returns its index for the conditions of later steps.
    pub fn step(&mut self, condition: Option<Condition>, stmt: impl Into<Statement>) -> usize {
        self.steps.push(BatchStep {
            condition,
            stmt: stmt.into(),
        });
        self.steps.len() - 1
    }

    /// `statements` in one transaction, all or nothing: `BEGIN IMMEDIATE`, each statement only
    /// if the one before succeeded, `COMMIT` if the last did, and `ROLLBACK` if `BEGIN`
    /// succeeded, `COMMIT` did not run or failed, and the transaction is still open. Read the
    /// outcome with [`BatchResult::transaction`]. (The `ROLLBACK` depends on this batch's own
    /// `BEGIN`: a server that shares one connection between requests, as `tursodb` does, must
    /// not see it roll back a transaction it did not open; and on the transaction still being
    /// open: `tursodb` already rolls it back when a statement fails while evaluating, e.g. on
    /// malformed JSON or an integer overflow.)
    pub fn transaction(statements: impl IntoIterator<Item = Statement>) -> Self {
        let mut batch = Batch::new();
        let begin = batch.step(None, "BEGIN IMMEDIATE");
        let mut last = begin;
        for stmt in statements {
            last = batch.step(Some(Condition::ok(last)), stmt);
        }
        let commit = batch.step(Some(Condition::ok(last)), "COMMIT");
        batch.step(
            Some(Condition::and([
                Condition::ok(begin),
                Condition::not(Condition::ok(commit)),
                Condition::not(Condition::IsAutocommit),
            ])),
            "ROLLBACK",
        );
        batch
    }
}

// ---------------------------------------------------------------------------------------------
// Results

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
fn optional_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
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

// ---------------------------------------------------------------------------------------------
// The pipeline on the wire

/// One request of a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamRequest {
    /// Runs one statement.
    Execute {
        /// The statement.
        stmt: Statement,
    },
    /// Runs a batch.
    Batch {
        /// The batch.
        batch: Batch,
    },
    /// Closes the stream (rejected by `tursodb`, which keeps no streams).
    Close,
}

/// The answer to one request of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamResult {
    /// An `execute` that succeeded.
    Execute(StmtResult),
    /// A batch (whatever its steps' outcomes).
    Batch(BatchResult),
    /// A `close`.
    Closed,
    /// The request failed as a whole (for `execute`: its statement failed).
    Error(SqlError),
}

#[derive(Serialize)]
struct PipelineRequest<'a> {
    baton: Option<&'a str>,
    requests: &'a [StreamRequest],
}

#[derive(Deserialize)]
struct PipelineResponse {
    #[serde(default)]
    baton: Option<String>,
    results: Vec<WireStreamResult>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStreamResult {
    Ok { response: WireStreamResponse },
    Error { error: SqlError },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireStreamResponse {
    Execute { result: StmtResult },
    Batch { result: BatchResult },
    Close,
}

impl From<WireStreamResult> for StreamResult {
    fn from(wire: WireStreamResult) -> Self {
        match wire {
            WireStreamResult::Ok {
                response: WireStreamResponse::Execute { result },
            } => StreamResult::Execute(result),
            WireStreamResult::Ok {
                response: WireStreamResponse::Batch { result },
            } => StreamResult::Batch(result),
            WireStreamResult::Ok {
                response: WireStreamResponse::Close,
            } => StreamResult::Closed,
            WireStreamResult::Error { error } => StreamResult::Error(error),
        }
    }
}

/// The JSON body of a pipeline request.
pub fn encode_pipeline(
    baton: Option<&str>,
    requests: &[StreamRequest],
) -> Result<Vec<u8>, HranaError> {
    serde_json::to_vec(&PipelineRequest { baton, requests })
        .map_err(|e| HranaError::Encode(e.to_string()))
}

/// The baton and results of a pipeline answer's JSON body; `Err` says what is malformed.
pub fn decode_pipeline(body: &[u8]) -> Result<(Option<String>, Vec<StreamResult>), String> {
    let response: PipelineResponse = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok((
        response.baton,
        response.results.into_iter().map(Into::into).collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The client

/// A client of one remote libSQL database. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct HranaClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// The endpoint as text, for errors.
    url: String,
    token: Option<String>,
    timeout: Duration,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl fmt::Debug for HranaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HranaClient")
            .field("url", &self.inner.url)
            .field("auth_token", &self.inner.token.as_ref().map(|_| "***"))
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl HranaClient {
    /// A client of the database at `url` (see [`Endpoint::parse`]), with `auth_token` (which
    /// takes precedence over the URL's `authToken=`). Opens no connection yet.
    pub fn new(url: &str, auth_token: Option<&str>) -> Result<Self, HranaError> {
        let (endpoint, url_token) = Endpoint::parse(url)?;
        let token = auth_token
            .map(str::to_owned)
            .filter(|t| !t.is_empty())
            .or(url_token);
        if let Some(token) = &token
            && token.bytes().any(|b| !(0x21..0x7f).contains(&b))
        {
            return Err(HranaError::InvalidUrl {
                url: redact(url),
                reason: "the auth token has characters an HTTP header cannot carry".into(),
            });
        }
        let tls = if endpoint.tls {
            let name =
                rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    HranaError::InvalidUrl {
                        url: redact(url),
                        reason: format!("the host is not a valid TLS server name: {e}"),
                    }
                })?;
            Some((tls_connector()?, name))
        } else {
            None
        };
        Ok(HranaClient {
            inner: Arc::new(Inner {
                url: endpoint.to_string(),
                endpoint,
                token,
                timeout: DEFAULT_TIMEOUT,
                tls,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The same client with another deadline per HTTP request (connection, request and
    /// answer). Call before cloning: clones made earlier keep the old one.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            endpoint: shared.endpoint.clone(),
            url: shared.url.clone(),
            token: shared.token.clone(),
            timeout: shared.timeout,
            tls: shared.tls.clone(),
            idle: Mutex::new(Vec::new()),
        });
        HranaClient {
            inner: Arc::new(Inner { timeout, ..inner }),
        }
    }

    /// The base URL requests go to (`https://host[:port][/prefix]`, never a token).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Runs one statement on a stream of its own.
    pub async fn execute(&self, stmt: impl Into<Statement>) -> Result<StmtResult, HranaError> {
        self.stream().execute(stmt).await
    }

    /// Runs a batch on a stream of its own. Steps that fail are reported in the result, not
    /// as an error.
    pub async fn batch(&self, batch: Batch) -> Result<BatchResult, HranaError> {
        self.stream().batch(batch).await
    }

    /// A new stream: its requests share one server-side connection (and so a transaction)
    /// when the server keeps streams ([`HranaStream::is_open`]).
    pub fn stream(&self) -> HranaStream {
        HranaStream {
            client: self.clone(),
            baton: None,
        }
    }

    /// Sends one pipeline; returns the server's baton and one result per request.
    pub async fn pipeline(
        &self,
        baton: Option<&str>,
        requests: &[StreamRequest],
    ) -> Result<(Option<String>, Vec<StreamResult>), HranaError> {
        let body = encode_pipeline(baton, requests)?;
        let answer = self.post(body).await?;
        let (baton, results) = decode_pipeline(&answer).map_err(|reason| self.protocol(reason))?;
        if results.len() != requests.len() {
            return Err(self.protocol(format!(
                "{} results for {} requests",
                results.len(),
                requests.len()
            )));
        }
        Ok((baton, results))
    }

    fn protocol(&self, reason: impl Into<String>) -> HranaError {
        HranaError::Protocol {
            url: self.inner.url.clone(),
            reason: reason.into(),
        }
    }

    /// POSTs `body` to the pipeline endpoint within the timeout; the answer's body on HTTP 200.
    async fn post(&self, body: Vec<u8>) -> Result<Bytes, HranaError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.post_now(body))
            .await
            .map_err(|_| HranaError::Timeout {
                url: self.inner.url.clone(),
                timeout,
            })?
    }

    async fn post_now(&self, body: Vec<u8>) -> Result<Bytes, HranaError> {
        let inner = &self.inner;
        let mut builder = Request::post(inner.endpoint.pipeline_path())
            .header(header::HOST, inner.endpoint.authority())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &inner.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HranaError::Encode(e.to_string()))?;
        // An idle connection the server may have closed meanwhile: a request that could not be
        // written is taken back and sent on the next connection (it never left this process).
        while let Some(mut sender) = self.idle_connection() {
            match sender.try_send_request(request).await {
                Ok(response) => return self.read(sender, response).await,
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(self.transport(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.transport(e))?;
        self.read(sender, response).await
    }

    fn transport(&self, source: hyper::Error) -> HranaError {
        HranaError::Transport {
            url: self.inner.url.clone(),
            source,
        }
    }

    /// Reads the answer; keeps the connection for the next request when the server does.
    async fn read(
        &self,
        sender: SendRequest<Full<Bytes>>,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, HranaError> {
        let status = response.status();
        let closes = response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if !closes && !sender.is_closed() {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(sender);
            }
        }
        if status == StatusCode::OK {
            return Ok(body);
        }
        let quoted = quote(&body);
        let url = self.inner.url.clone();
        Err(match status.as_u16() {
            status @ (401 | 403) => HranaError::Unauthorized {
                url,
                status,
                token_sent: self.inner.token.is_some(),
                body: quoted,
            },
            status => HranaError::Http {
                url,
                status,
                body: quoted,
            },
        })
    }

    fn idle_connection(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HranaError> {
        let inner = &self.inner;
        let tcp =
            tokio::net::TcpStream::connect((inner.endpoint.host.as_str(), inner.endpoint.port))
                .await
                .map_err(|source| HranaError::Connect {
                    url: inner.url.clone(),
                    source,
                })?;
        // Requests are small and answered at once: no Nagle delay on them.
        let _ = tcp.set_nodelay(true);
        match &inner.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| HranaError::Tls {
                        url: inner.url.clone(),
                        source,
                    })?;
                self.handshake(tls).await
            }
            None => self.handshake(tcp).await,
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<SendRequest<Full<Bytes>>, HranaError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport(e))?;
        let url = self.inner.url.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%url, %error, "libSQL HTTP connection ended");
            }
        });
        Ok(sender)
    }
}

/// The start of an HTTP body, as text, for an error.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTED_BODY) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// rustls on the ring provider, trusting the system's roots and Mozilla's (webpki-roots).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, HranaError> {
    // Deprecated in rustls 0.23.48 in favour of aws-lc-rs, which needs cmake to build (see
    // `store/postgres/tls.rs`). Allowed, so that a dependent's build prints no warning.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system root certificates were not loaded");
    }
    roots.add_parsable_certificates(native.certs);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HranaError::Encode(format!("cannot configure TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

// ---------------------------------------------------------------------------------------------
// Streams

/// A sequence of requests on one server-side stream, held between HTTP requests by the baton
/// when the server keeps streams (sqld, Turso). On a server that does not (`tursodb` answers
/// `baton: null`), each request is a stream of its own: [`HranaStream::is_open`] is then
/// `false` after every request, and a transaction must fit in one request (one
/// [`Batch::transaction`]).
#[derive(Debug)]
pub struct HranaStream {
    client: HranaClient,
    baton: Option<String>,
}

impl HranaStream {
    /// Whether the server holds this stream for the next request (it returned a baton).
    pub fn is_open(&self) -> bool {
        self.baton.is_some()
    }

    /// Sends requests on this stream; one result per request.
    pub async fn pipeline(
        &mut self,
        requests: &[StreamRequest],
    ) -> Result<Vec<StreamResult>, HranaError> {
        let baton = self.baton.take();
        let (baton, results) = self.client.pipeline(baton.as_deref(), requests).await?;
        self.baton = baton;
        Ok(results)
    }

    /// Runs one statement; its failure is [`HranaError::Sql`].
    pub async fn execute(&mut self, stmt: impl Into<Statement>) -> Result<StmtResult, HranaError> {
        let stmt = stmt.into();
        let sql = quote(stmt.sql.as_bytes());
        let mut results = self.pipeline(&[StreamRequest::Execute { stmt }]).await?;
        match results.pop() {
            Some(StreamResult::Execute(result)) => Ok(result),
            Some(StreamResult::Error(error)) => Err(HranaError::Sql { error, sql }),
            _ => Err(self
                .client
                .protocol("an execute answered by another kind of result")),
        }
    }

    /// Runs a batch. Steps that fail are reported in the result; the batch as a whole failing
    /// is [`HranaError::Sql`].
    pub async fn batch(&mut self, batch: Batch) -> Result<BatchResult, HranaError> {
        let steps = batch.steps.len();
        let sql = quote(
            batch
                .steps
                .first()
                .map_or("(empty batch)", |s| s.stmt.sql.as_str())
                .as_bytes(),
        );
        let mut results = self.pipeline(&[StreamRequest::Batch { batch }]).await?;
        match results.pop() {
            Some(StreamResult::Batch(result))
                if result.step_results.len() == steps && result.step_errors.len() == steps =>
            {
                Ok(result)
            }
            Some(StreamResult::Batch(result)) => Err(self.client.protocol(format!(
                "{} step results and {} step errors for a batch of {steps} steps",
                result.step_results.len(),
                result.step_errors.len()
            ))),
            Some(StreamResult::Error(error)) => Err(HranaError::Sql { error, sql }),
            _ => Err(self
                .client
                .protocol("a batch answered by another kind of result")),
        }
    }

    /// Closes the stream on the server, if the server holds it; a no-op otherwise (a server
    /// without streams, such as `tursodb`, rejects `close`).
    pub async fn close(mut self) -> Result<(), HranaError> {
        if self.baton.is_some() {
            self.pipeline(&[StreamRequest::Close]).await?;
        }
        Ok(())
    }
}

impl Drop for HranaStream {
    /// A stream dropped while the server holds it is closed in the background, so that the
    /// server does not keep its connection (and any transaction) until its idle timeout.
    fn drop(&mut self) {
        let Some(baton) = self.baton.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        runtime.spawn(async move {
            if let Err(error) = client.pipeline(Some(&baton), &[StreamRequest::Close]).await {
                tracing::debug!(url = %client.url(), %error, "closing a libSQL stream failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_encode_as_hrana_json() {
        let values = vec![
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Float(2.5),
            Value::Text("é\"x".into()),
            Value::Blob(vec![1, 2]),
            Value::Blob(vec![]),
        ];
        assert_eq!(
            serde_json::to_value(&values).unwrap(),
            json!([
                {"type": "null"},
                {"type": "integer", "value": "-9223372036854775808"},
                {"type": "float", "value": 2.5},
                {"type": "text", "value": "é\"x"},
                {"type": "blob", "base64": "AQI="},
                {"type": "blob", "base64": ""},
            ])
        );
        let err = encode_pipeline(
            None,
            &[StreamRequest::Execute {
                stmt: Statement::new("SELECT ?").arg(f64::NAN),
            }],
        )
        .unwrap_err();
        assert!(matches!(err, HranaError::Encode(_)), "{err}");
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    #[test]
    fn values_decode_from_hrana_json() {
        let decoded: Vec<Value> = serde_json::from_value(json!([
            {"type": "null"},
            {"type": "integer", "value": "9223372036854775807"},
            {"type": "integer", "value": 7},
            {"type": "float", "value": 1e300},
            {"type": "float", "value": 3},
            {"type": "text", "value": ""},
            {"type": "blob", "base64": "AQI"},
            {"type": "blob", "base64": "AQI="},
        ]))
        .unwrap();
        assert_eq!(
            decoded,
            vec![
                Value::Null,
                Value::Integer(i64::MAX),
                Value::Integer(7),
                Value::Float(1e300),
                Value::Float(3.0),
                Value::Text(String::new()),
                Value::Blob(vec![1, 2]),
                Value::Blob(vec![1, 2]),
            ]
        );
        for bad in [
            json!({"type": "integer", "value": "9223372036854775808"}),
            json!({"type": "integer"}),
            json!({"type": "blob", "base64": "!!"}),
            json!({"type": "date", "value": "x"}),
        ] {
            assert!(
                serde_json::from_value::<Value>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_transaction_batch_encodes_its_conditions() {
        let batch = Batch::transaction([
            Statement::with_args("INSERT INTO t VALUES (?1)", [Value::Integer(1)]),
            Statement::new("DELETE FROM u"),
        ]);
        let body = encode_pipeline(Some("b1"), &[StreamRequest::Batch { batch }]).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"baton": "b1", "requests": [{"type": "batch", "batch": {"steps": [
                {"stmt": {"sql": "BEGIN IMMEDIATE", "want_rows": true}},
                {"condition": {"type": "ok", "step": 0}, "stmt": {"sql": "INSERT INTO t VALUES (?1)",
                    "args": [{"type": "integer", "value": "1"}], "want_rows": true}},
                {"condition": {"type": "ok", "step": 1}, "stmt": {"sql": "DELETE FROM u", "want_rows": true}},
                {"condition": {"type": "ok", "step": 2}, "stmt": {"sql": "COMMIT", "want_rows": true}},
                {"condition": {"type": "and", "conds": [
                    {"type": "ok", "step": 0},
                    {"type": "not", "cond": {"type": "ok", "step": 3}},
                    {"type": "not", "cond": {"type": "is_autocommit"}}]},
                 "stmt": {"sql": "ROLLBACK", "want_rows": true}},
            ]}}]})
        );
        let other = serde_json::to_value(Condition::or([
            Condition::error(1),
            Condition::IsAutocommit,
        ]))
        .unwrap();
        assert_eq!(
            other,
            json!({"type": "or", "conds": [{"type": "error", "step": 1}, {"type": "is_autocommit"}]})
        );
        let close = encode_pipeline(None, &[StreamRequest::Close]).unwrap();
        assert_eq!(
            std::str::from_utf8(&close).unwrap(),
            r#"{"baton":null,"requests":[{"type":"close"}]}"#
        );
    }

    #[test]
    fn pipeline_answers_decode() {
        // As tursodb 0.7 answers: extra fields, `last_insert_rowid: null`, skipped steps.
        let body = json!({"baton": null, "base_url": null, "results": [
            {"type": "ok", "response": {"type": "execute", "result": {
                "cols": [{"name": "a", "decltype": "integer"}, {"name": "b", "decltype": null}],
                "rows": [[{"type": "integer", "value": "1"}, {"type": "text", "value": "x"}]],
                "affected_row_count": 0, "last_insert_rowid": null, "replication_index": null,
                "rows_read": 0, "rows_written": 0, "query_duration_ms": 0.0}}},
            {"type": "ok", "response": {"type": "batch", "result": {
                "step_results": [{"cols": [], "rows": [], "affected_row_count": 1, "last_insert_rowid": "42"}, null, null],
                "step_errors": [null, {"message": "UNIQUE constraint failed: t.a", "code": "SQLITE_CONSTRAINT"}, null],
                "replication_index": null}}},
            {"type": "error", "error": {"message": "no such table: nope", "code": "PREPARE_ERROR"}},
            {"type": "ok", "response": {"type": "close"}},
        ]});
        let (baton, results) = decode_pipeline(body.to_string().as_bytes()).unwrap();
        assert_eq!(baton, None);
        let StreamResult::Execute(first) = &results[0] else {
            panic!("{results:?}")
        };
        assert_eq!(first.scalar(), Some(&Value::Integer(1)));
        assert_eq!(first.cols[1].name.as_deref(), Some("b"));
        let StreamResult::Batch(batch) = &results[1] else {
            panic!("{results:?}")
        };
        let StepOutcome::Ok(step0) = batch.step(0) else {
            panic!("{batch:?}")
        };
        assert_eq!(step0.last_insert_rowid, Some(42));
        assert!(matches!(batch.step(1), StepOutcome::Failed(e) if e.message.contains("UNIQUE")));
        assert_eq!(batch.step(2), StepOutcome::Skipped);
        assert_eq!(batch.first_error().map(|(i, _)| i), Some(1));
        let StreamResult::Error(error) = &results[2] else {
            panic!("{results:?}")
        };
        assert_eq!(error.to_string(), "no such table: nope [PREPARE_ERROR]");
        assert_eq!(results[3], StreamResult::Closed);
        assert!(decode_pipeline(b"Internal Server Error").is_err());
        assert!(decode_pipeline(br#"{"baton":null,"results":[{"type":"ok"}]}"#).is_err());
    }

    #[test]
    fn a_transactions_outcome_is_read_from_its_commit() {
        let ok = |n: i64| {
            Some(StmtResult {
                cols: vec![],
                rows: vec![vec![Value::Integer(n)]],
                affected_row_count: 0,
                last_insert_rowid: None,
            })
        };
        let committed = BatchResult {
            step_results: vec![ok(0), ok(1), ok(2), ok(3), None],
            step_errors: vec![None; 5],
        };
        let results = committed.transaction().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[1].scalar(), Some(&Value::Integer(2)));
        let failed = BatchResult {
            step_results: vec![ok(0), None, None, None, ok(4)],
            step_errors: vec![
                None,
                Some(SqlError {
                    message: "boom".into(),
                    code: None,
                }),
                None,
                None,
                None,
            ],
        };
        assert_eq!(failed.transaction().unwrap_err().message, "boom");
    }

    #[test]
    fn urls_parse() {
        let parse = |url: &str| Endpoint::parse(url).map(|(e, t)| (e.to_string(), t));
        assert_eq!(
            parse("libsql://db-org.turso.io").unwrap(),
            ("https://db-org.turso.io".into(), None)
        );
        assert_eq!(
            parse("libsql://db.example?authToken=abc.def&tls=0").unwrap(),
            ("http://db.example".into(), Some("abc.def".into()))
        );
        assert_eq!(
            parse("https://h:8443/base/").unwrap(),
            ("https://h:8443/base".into(), None)
        );
        assert_eq!(
            parse("HTTP://127.0.0.1:8080").unwrap(),
            ("http://127.0.0.1:8080".into(), None)
        );
        assert_eq!(
            parse("http://[::1]:8080/").unwrap(),
            ("http://[::1]:8080".into(), None)
        );
        let (endpoint, _) = Endpoint::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(endpoint.host, "::1");
        assert_eq!(endpoint.pipeline_path(), "/x/v2/pipeline");
        assert_eq!(Endpoint::parse("https://h").unwrap().0.port, 443);
        assert_eq!(Endpoint::parse("http://h").unwrap().0.port, 80);
        for (bad, says) in [
            ("db.turso.io", "expected libsql://"),
            ("postgres://h", "expected libsql://"),
            ("wss://h", "WebSocket"),
            ("http://", "no host"),
            ("http://h:0", "bad port"),
            ("http://h:99999", "bad port"),
            ("http://u:p@h", "credentials"),
            ("http://h?x=1", "unknown query parameter"),
            ("https://h?tls=0", "only meaningful with libsql"),
            ("libsql://h?tls=2", "must be 0 or 1"),
            ("http://[::1:80", "unclosed"),
            ("http://h#top", "fragment"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let err = Endpoint::parse("libsql://h?authToken=secret&bad=1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_client_never_shows_its_token() {
        let client = HranaClient::new("libsql://h.example?authToken=secret", None).unwrap();
        assert_eq!(client.url(), "https://h.example");
        assert!(!format!("{client:?}").contains("secret"));
        let err = HranaClient::new("http://h", Some("bad token")).unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let unauthorized = HranaError::Unauthorized {
            url: "https://h".into(),
            status: 401,
            token_sent: false,
            body: "Unauthorized".into(),
        };
        assert_eq!(
            unauthorized.to_string(),
            "the libSQL server at https://h refused the auth token (HTTP 401, no token was sent): Unauthorized"
        );
        assert!(!unauthorized.may_have_run());
        let not_found = HranaError::Http {
            url: "http://h".into(),
            status: 404,
            body: "Not Found".into(),
        };
        assert!(not_found.to_string().contains("no Hrana v2 endpoint"));
        assert!(!not_found.may_have_run());
        let server = HranaError::Http {
            url: "http://h".into(),
            status: 500,
            body: String::new(),
        };
        assert!(server.may_have_run());
        assert_eq!(quote("x".repeat(600).as_bytes()).chars().count(), 501);
    }
}
