//! The HTTP client of one remote database: connections, TLS, deadlines.

use super::*;

/// A client of one remote libSQL database. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct HranaClient {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
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

    pub(super) fn protocol(&self, reason: impl Into<String>) -> HranaError {
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
