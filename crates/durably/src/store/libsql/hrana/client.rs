//! The HTTP client of one remote database: connections, TLS, deadlines.

use super::*;

/// A client of one remote libSQL database. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct HranaClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) endpoint: Endpoint,
    /// The endpoint as text, for errors.
    pub(super) url: String,
    pub(super) token: Option<String>,
    pub(super) timeout: Duration,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// The negotiated version ([`HranaClient::negotiate`]).
    pub(super) version: OnceLock<HranaVersion>,
    /// HTTP requests sent (probes included).
    requests: AtomicU64,
}

impl fmt::Debug for HranaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HranaClient")
            .field("url", &self.inner.url)
            .field("auth_token", &self.inner.token.as_ref().map(|_| "***"))
            .field("timeout", &self.inner.timeout)
            .field("version", &self.inner.version.get())
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
                version: OnceLock::new(),
                requests: AtomicU64::new(0),
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
            version: shared.version.clone(),
            requests: AtomicU64::new(shared.requests.load(Ordering::Relaxed)),
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

    /// How many HTTP requests this client and its clones have sent: pipelines, and the one
    /// `GET v3` of [`HranaClient::negotiate`]. Requests resent because they could not be
    /// written on an idle connection count once.
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
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
        let version = self.negotiate().await?;
        let downgraded: Vec<StreamRequest>;
        let requests_sent = if version < HranaVersion::V3
            && requests
                .iter()
                .any(|r| matches!(r, StreamRequest::Batch { batch } if batch.rollback.is_some()))
        {
            downgraded = requests
                .iter()
                .map(|request| match request {
                    StreamRequest::Batch { batch } => StreamRequest::Batch {
                        batch: batch.for_version(version).into_owned(),
                    },
                    other => other.clone(),
                })
                .collect();
            &downgraded
        } else {
            requests
        };
        let body = encode_pipeline(baton, requests_sent)?;
        let answer = self.post(version, body).await?;
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

    pub(super) fn protocol(&self, reason: impl Into<String>) -> HranaError {
        HranaError::Protocol {
            url: self.inner.url.clone(),
            reason: reason.into(),
        }
    }

    /// POSTs `body` to `version`'s pipeline endpoint within the timeout; the answer's body on
    /// HTTP 200.
    async fn post(&self, version: HranaVersion, body: Vec<u8>) -> Result<Bytes, HranaError> {
        let path = self.inner.endpoint.pipeline_path(version);
        let request = self.request(hyper::Method::POST, &path, body)?;
        let timeout = self.inner.timeout;
        let (status, body) = tokio::time::timeout(timeout, self.send(request))
            .await
            .map_err(|_| HranaError::Timeout {
                url: self.inner.url.clone(),
                timeout,
            })??;
        if status == StatusCode::OK {
            return Ok(body);
        }
        Err(self.status_error(status, &body))
    }

    /// The error of an HTTP status other than 200.
    pub(super) fn status_error(&self, status: StatusCode, body: &[u8]) -> HranaError {
        let quoted = quote(body);
        let url = self.inner.url.clone();
        match status.as_u16() {
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
        }
    }

    /// A request to `path` with the client's headers (and its token).
    pub(super) fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, HranaError> {
        let inner = &self.inner;
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, inner.endpoint.authority())
            .header(header::ACCEPT, "application/json");
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &inner.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HranaError::Encode(e.to_string()))
    }

    /// Sends `request` (on an idle connection if there is one) and reads the whole answer:
    /// its status and body, whatever the status.
    pub(super) async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), HranaError> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
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
    ) -> Result<(StatusCode, Bytes), HranaError> {
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
        Ok((status, body))
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
pub(super) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(QUOTED_BODY) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// rustls on the ring provider, trusting the system's roots and Mozilla's (webpki-roots).
pub(super) fn tls_connector() -> Result<tokio_rustls::TlsConnector, HranaError> {
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
