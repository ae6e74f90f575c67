//! The answers: JSON bodies, `{"error": "<message>"}` with the status of each error kind
//! (upstream §8.3), and the plain-text `404 Not Found` of an unknown route.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;

use crate::error::Error;

pub(super) type Reply = Result<Response, Response>;

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not serialize the response: {error}"),
        ),
    }
}

pub(super) fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// The HTTP status of an error (upstream §8.3 with SPEC §3's fixes).
fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Validation(_) => StatusCode::BAD_REQUEST,
        Error::Conflict(_) => StatusCode::CONFLICT,
        // Upstream's `WaitExpiredError`: the wait's deadline passed before the signal.
        Error::WaitExpired { .. } => StatusCode::GONE,
        // A read that outlived `HttpOptions::read_timeout`.
        Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(super) fn durably_error(error: Error) -> Response {
    let status = status_of(&error);
    if status.is_server_error() {
        tracing::warn!(%error, "durably HTTP request failed");
    }
    error_response(status, &error.to_string())
}

pub(super) fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

pub(super) fn not_found_text() -> Response {
    let mut response = Response::new(Body::from("Not Found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    response
}
