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
//!
//! Files: `error.rs`, `endpoint.rs` (URLs), `values.rs` (values, statements, batches),
//! `results.rs`, `wire.rs` (the pipeline's JSON), `client.rs` (HTTP, TLS, deadlines),
//! `stream.rs` (batons).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::ser::{Error as _, SerializeMap as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod client;
mod endpoint;
mod error;
mod results;
mod stream;
mod values;
mod version;
mod wire;

pub use client::*;
pub use endpoint::*;
pub use error::*;
pub use results::*;
pub use stream::*;
pub use values::*;
pub use version::*;
pub use wire::*;

/// The deadline of one HTTP request unless [`HranaClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections kept per client.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// How much of an unexpected HTTP body an error quotes.
const QUOTED_BODY: usize = 500;

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
        // On Hrana 2 (no `is_autocommit`): ROLLBACK when BEGIN succeeded and COMMIT did not.
        let batch = Batch::transaction([Statement::new("DELETE FROM u")]);
        let v2 = serde_json::to_value(&*batch.for_version(HranaVersion::V2)).unwrap();
        assert_eq!(
            v2["steps"][3],
            json!({"condition": {"type": "and", "conds": [
                {"type": "ok", "step": 0}, {"type": "not", "cond": {"type": "ok", "step": 2}}]},
                "stmt": {"sql": "ROLLBACK", "want_rows": true}})
        );
        assert_eq!(*batch.for_version(HranaVersion::V3), batch);
        assert_eq!(*Batch::new().for_version(HranaVersion::V2), Batch::new());
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
        assert_eq!(endpoint.pipeline_path(HranaVersion::V2), "/x/v2/pipeline");
        assert_eq!(endpoint.pipeline_path(HranaVersion::V3), "/x/v3/pipeline");
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
        assert!(not_found.to_string().contains("no Hrana pipeline endpoint"));
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
