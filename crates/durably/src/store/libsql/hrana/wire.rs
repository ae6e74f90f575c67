//! The pipeline on the wire: its JSON requests and responses.

use super::*;

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
pub(super) struct PipelineRequest<'a> {
    baton: Option<&'a str>,
    requests: &'a [StreamRequest],
}

#[derive(Deserialize)]
pub(super) struct PipelineResponse {
    #[serde(default)]
    baton: Option<String>,
    results: Vec<WireStreamResult>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WireStreamResult {
    Ok { response: WireStreamResponse },
    Error { error: SqlError },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WireStreamResponse {
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
