//! A sequence of requests on one server-side stream, held by the baton.

use super::*;

/// A sequence of requests on one server-side stream, held between HTTP requests by the baton
/// when the server keeps streams (sqld, Turso). On a server that does not (`tursodb` answers
/// `baton: null`), each request is a stream of its own: [`HranaStream::is_open`] is then
/// `false` after every request, and a transaction must fit in one request (one
/// [`Batch::transaction`]).
#[derive(Debug)]
pub struct HranaStream {
    pub(super) client: HranaClient,
    pub(super) baton: Option<String>,
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
