//! Which version of Hrana over HTTP a server speaks: asked once per client (`GET v3`), then
//! every pipeline goes to `v3/pipeline` or `v2/pipeline`.
//!
//! For this client the two differ only in their path and in one condition: `is_autocommit`
//! (a step runs only outside a transaction) is Hrana 3; sqld refuses it on `v2/pipeline` (a
//! protocol error that fails the whole request). So the `ROLLBACK` step of a
//! [`Batch::transaction`] carries it on Hrana 3 only. The rest of Hrana 3 (`get_autocommit`,
//! cursors on `v3/cursor`, the Protobuf encoding on `v3-protobuf`) is not used.

use super::*;

/// A version of Hrana over HTTP (JSON encoding), as negotiated by [`HranaClient::negotiate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HranaVersion {
    /// Hrana 2: `POST v2/pipeline` (`tursodb --sync-server`, older sqld).
    V2,
    /// Hrana 3: `POST v3/pipeline` (sqld, Turso), offered when `GET v3` answers 2xx.
    V3,
}

impl HranaVersion {
    /// The version's number: 2 or 3.
    pub fn number(self) -> u8 {
        match self {
            HranaVersion::V2 => 2,
            HranaVersion::V3 => 3,
        }
    }

    /// The pipeline endpoint's path after the URL's prefix.
    pub(super) fn pipeline_path(self) -> &'static str {
        match self {
            HranaVersion::V2 => "/v2/pipeline",
            HranaVersion::V3 => "/v3/pipeline",
        }
    }
}

impl fmt::Display for HranaVersion {
    /// `Hrana 2` or `Hrana 3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hrana {}", self.number())
    }
}

/// What one `GET v3` told.
enum Probed {
    /// The version, to keep for the client's life.
    Known(HranaVersion),
    /// A server error (5xx): Hrana 2 for this request, asked again on the next.
    ForNow(HranaVersion),
}

impl HranaClient {
    /// The version this client speaks with its server, once a request found it out (`None`
    /// before the first request, or after a probe that failed).
    pub fn protocol_version(&self) -> Option<HranaVersion> {
        self.inner.version.get().copied()
    }

    /// The version this client speaks with its server: asked with `GET {url}/v3` on the first
    /// call (Hrana 3 when it answers 2xx, Hrana 2 when it answers 4xx, e.g. `tursodb`'s 404),
    /// then kept. A 5xx answer means Hrana 2 for now and is asked again next time. A refused
    /// token is [`HranaError::Unauthorized`], a server that cannot be reached
    /// [`HranaError::Connect`] or [`HranaError::Tls`], and any other failure
    /// [`HranaError::Negotiation`]: no pipeline was sent in any of these cases.
    pub async fn negotiate(&self) -> Result<HranaVersion, HranaError> {
        if let Some(version) = self.inner.version.get() {
            return Ok(*version);
        }
        let outcome = match self.probe().await {
            Ok(status) if status.is_success() => Probed::Known(HranaVersion::V3),
            Ok(status) if status.is_client_error() => Probed::Known(HranaVersion::V2),
            Ok(_) => Probed::ForNow(HranaVersion::V2),
            Err(
                error @ (HranaError::Unauthorized { .. }
                | HranaError::Connect { .. }
                | HranaError::Tls { .. }),
            ) => return Err(error),
            Err(error) => {
                return Err(HranaError::Negotiation {
                    url: self.inner.url.clone(),
                    source: Box::new(error),
                });
            }
        };
        Ok(match outcome {
            Probed::Known(version) => *self.inner.version.get_or_init(|| version),
            Probed::ForNow(version) => version,
        })
    }

    /// `GET {prefix}/v3` within the timeout: its status (401 and 403 are errors).
    async fn probe(&self) -> Result<StatusCode, HranaError> {
        let path = format!("{}/v3", self.inner.endpoint.prefix());
        let request = self.request(hyper::Method::GET, &path, Vec::new())?;
        let timeout = self.inner.timeout;
        let (status, body) = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| HranaError::Timeout {
                url: self.inner.url.clone(),
                timeout,
            })??;
        match status.as_u16() {
            401 | 403 => Err(self.status_error(status, &body)),
            _ => Ok(status),
        }
    }
}

impl Batch {
    /// This batch as `version` allows it: on Hrana 2, the `ROLLBACK` step of a
    /// [`Batch::transaction`] without its `is_autocommit` condition (a `ROLLBACK` after the
    /// server already rolled the transaction back then fails on its own, after the error that
    /// decided the outcome, and changes nothing).
    pub(super) fn for_version(&self, version: HranaVersion) -> std::borrow::Cow<'_, Batch> {
        let Some(rollback) = self.rollback.filter(|_| version < HranaVersion::V3) else {
            return std::borrow::Cow::Borrowed(self);
        };
        let mut batch = self.clone();
        if let Some(step) = batch.steps.get_mut(rollback) {
            step.condition = Some(Condition::and([
                Condition::ok(0),
                Condition::not(Condition::ok(rollback.saturating_sub(1))),
            ]));
        }
        std::borrow::Cow::Owned(batch)
    }
}
