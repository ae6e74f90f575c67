//! PostgreSQL backend (`tokio-postgres`, pooled by `deadpool-postgres`).
//!
//! Many workers on many hosts share one database. Every operation is one statement where the
//! semantics allow it (CTEs with `RETURNING`), run on a pooled connection with cached prepared
//! statements, so most operations cost one round trip and one commit.
//!
//! - **Claim** (`claim`): one statement picks the oldest claimable runs with
//!   `FOR UPDATE SKIP LOCKED` (pending runs and expired leases, skipping keys held by an unexpired
//!   lease) and leases the ones without a concurrency key at once. Runs with a key are then
//!   leased in a short transaction that takes the advisory lock `hashtext(key)` of each key
//!   (upstream §4.1) and re-checks, in a fresh snapshot, that no other run with that key holds
//!   an unexpired lease. It never waits, for a key's lock (`pg_try_advisory_xact_lock`) nor for a
//!   run's row (`SKIP LOCKED`): a key another claimer is claiming is left to it, and no claim can
//!   close a deadlock with another, ours or the TypeScript runtime's (which holds a run's row and
//!   other keys' locks while it waits for a key's lock). Several runs are claimed in one call
//!   when several slots are free.
//! - **Fencing**: every lease-holder write is conditioned on
//!   `status = 'leased' AND lease_generation = <fence>` in the same statement.
//! - **Wake-ups**: enqueue, cancel, lease release and the end of a run holding a concurrency key
//!   send `NOTIFY` on a channel named after the schema; [`Store::notifications`] exposes them
//!   through a dedicated listener connection that reconnects on its own. A cancel notice is not
//!   echoed to the store that wrote it (in-process cancels reach the worker directly; a cancel
//!   written by another store, process or host fires the executing run's token).
//! - **Faults**: writes whose outcome is unknown because the connection dropped (server restart,
//!   terminated backend) are retried for [`PostgresOptions::retry_for`]; each retry is idempotent
//!   (the row ids are fixed before the first attempt and a retry recognises its own earlier
//!   commit), so a completed step is never recorded twice nor run again. Claims are not retried
//!   here: the worker reports the error (`worker:error`) and backs off.

mod batch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::{
    ClaimRequest, Enqueued, Fence, LEASE_EXPIRED_PENDING_EXISTS, NewLog, NewRun, NewStep, RunPatch,
    Store, StoreNotice, parse_labels, parse_optional_json, pending_conflict, pending_run,
    validate_label_key,
};
use crate::error::{Error, Result};
use crate::run::{
    Disposition, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step, StepStatus,
};
use crate::store::migrations::{Ladder, POSTGRES_OWN, UPSTREAM};
use crate::time::{Timestamp, new_id_at};

/// Options for [`PostgresStore::connect_with`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Most pooled connections kept open by this store (default 16). The notification listener
    /// uses one more connection of its own, and the lease holders' step writes and completions
    /// a pool of their own: 2 connections with group commit, up to `max_connections` without.
    pub max_connections: usize,
    /// Schema holding the durably tables (sets `search_path`; default: the server's
    /// `search_path`, usually `public`). `migrate` creates it when missing. Letters, digits and
    /// `_` only. Useful to isolate tests or tenants in one database.
    pub schema: Option<String>,
    /// How long opening a connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long an operation waits for a pooled connection (default 30 s).
    pub wait_timeout: Duration,
    /// How long a write whose connection failed is retried before the error is returned
    /// (default 20 s; zero disables retries). Claims are never retried here.
    pub retry_for: Duration,
    /// Group commit (default on): concurrent step writes and completions share one statement
    /// and one commit. Off: each runs as its own statement.
    pub group_commit: bool,
    /// `synchronous_commit` of this store's sessions (default `true`: every commit waits for
    /// its WAL flush). `false` acknowledges commits before the flush: much higher throughput on
    /// slow disks, but a server crash (not a clean restart) may lose the last fraction of a
    /// second of acknowledged writes, so a step completed just before may run again. The
    /// database stays consistent either way (fencing is unaffected).
    pub synchronous_commit: bool,
    /// How long a group-commit batch may wait for the next writes of the runs whose steps
    /// earlier batches persisted (default 200 µs; zero sends every batch at once). Runs
    /// stepping at once otherwise split into batches that alternate, each paying a round trip,
    /// a commit and the statements' fixed cost for a fraction of the runs; waiting until those
    /// runs' next steps are in lets one batch carry them all. A lone run never waits for
    /// itself, and a run that goes quiet (a long step) costs one wait, once.
    pub commit_delay: Duration,
    /// A PEM file of extra root certificates (one or more `CERTIFICATE` blocks) to trust for
    /// the server's TLS certificate under `sslmode=require`, besides the system's roots and
    /// Mozilla's (webpki-roots): the CA bundle of a managed service with a private CA (Amazon
    /// RDS, Cloud SQL, Supabase, …), a company CA, or a self-signed server's own certificate.
    /// Default: none. [`PostgresStore::connect_with`] reads it at once and fails with
    /// [`Error::Config`] naming the file when it cannot be read or holds no valid certificate.
    /// See [`PostgresStore::connect_with`] for how `sslmode` decides what is verified.
    pub root_certificates: Option<PathBuf>,
    /// **Dangerous: for development only.** Accept any server certificate under
    /// `sslmode=require` (self-signed, expired, issued for another host) without verifying it
    /// (default `false`). The connection is still encrypted, but anyone who can intercept it can
    /// impersonate the server and read or change everything, credentials included. Prefer
    /// [`root_certificates`](Self::root_certificates) with the server's CA.
    pub danger_accept_invalid_certificates: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 16,
            schema: None,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(20),
            group_commit: true,
            synchronous_commit: true,
            commit_delay: Duration::from_micros(200),
            root_certificates: None,
            danger_accept_invalid_certificates: false,
        }
    }
}

/// The PostgreSQL store. Cheap to clone; all clones share one pool and one listener.
///
/// ```no_run
/// # async fn example() -> durably::Result<()> {
/// use durably::{PostgresStore, Store};
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app")?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    /// Connections of the lease-holder batches (group commit).
    batch_pool: Pool,
    config: tokio_postgres::Config,
    /// The TLS settings of every connection: both pools' and the listener's.
    tls: MakeRustlsConnect,
    channel: String,
    /// This store's id in cancel notices: a cancel written through this very store is not
    /// echoed back to it (in-process cancels reach the worker directly).
    origin: String,
    schema: Option<String>,
    retry_for: Duration,
    group_commit: bool,
    commit_delay: Duration,
    counters: Arc<batch::Counters>,
    notices: Arc<Mutex<Option<broadcast::Sender<StoreNotice>>>>,
    batcher: Mutex<Option<tokio::sync::mpsc::UnboundedSender<batch::Request>>>,
    stop: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.shared.config.get_hosts())
            .field("dbname", &self.shared.config.get_dbname())
            .field("schema", &self.shared.schema)
            .finish()
    }
}

/// A connection pool on `config` with at most `max_size` connections, connecting with `tls`.
fn build_pool(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    max_size: usize,
    options: &PostgresOptions,
    session_setup: Option<&'static str>,
) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager);
    if let Some(setup) = session_setup {
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            Box::pin(async move {
                client
                    .batch_execute(setup)
                    .await
                    .map_err(HookError::Backend)
            })
        }));
    }
    builder
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .build()
        .map_err(|e| Error::Config(format!("cannot build the PostgreSQL pool: {e}")))
}

// ---------------------------------------------------------------------------------------------
// TLS

/// The TLS settings of a store's connections, for the `sslmode` of `config` (see
/// [`PostgresStore::connect_with`]). Reads [`PostgresOptions::root_certificates`] whatever the
/// mode, so a wrong path fails here rather than on the first `require` connection.
fn tls_connector(
    config: &tokio_postgres::Config,
    options: &PostgresOptions,
) -> Result<MakeRustlsConnect> {
    // An explicit provider: no dependence on (or conflict with) a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match &options.root_certificates {
        Some(path) => read_root_certificates(path)?,
        None => rustls::RootCertStore::empty(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("cannot configure TLS: {e}")))?;
    // Every mode that insists on TLS verifies (`require`, and any stricter mode a later
    // tokio-postgres may parse); `prefer` does not (see `connect_with`).
    let insists = !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer);
    let verify = insists && !options.danger_accept_invalid_certificates;
    let mut tls = if verify {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::debug!(errors = ?native.errors, "some system root certificates were not loaded");
        }
        roots.add_parsable_certificates(native.certs);
        roots.roots.extend(extra.roots);
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        if insists {
            tracing::warn!(
                "PostgresOptions::danger_accept_invalid_certificates is set: the PostgreSQL \
                 server's certificate is not verified, so the connection can be intercepted"
            );
        } else if options.root_certificates.is_some() {
            tracing::warn!(
                "PostgresOptions::root_certificates has no effect without sslmode=require in the \
                 URL: certificates are only verified under sslmode=require"
            );
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    // What PostgreSQL 17 requires of `sslnegotiation=direct`; older servers ignore it.
    tls.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(tls))
}

/// The certificates of the PEM file at `path`, as trust anchors.
fn read_root_certificates(path: &Path) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let invalid = |why: String| {
        Error::Config(format!(
            "cannot use the root certificates of PostgresOptions::root_certificates ({}): {why}",
            path.display()
        ))
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read the file: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let certificate = certificate
            .map_err(|e| invalid(format!("invalid PEM (certificate {}): {e}", n + 1)))?;
        roots.add(certificate).map_err(|e| {
            invalid(format!(
                "certificate {} is not a valid X.509 certificate: {e}",
                n + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(invalid(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    Ok(roots)
}

/// The verifier of `prefer` and of [`PostgresOptions::danger_accept_invalid_certificates`]:
/// accepts any certificate, but still checks that the server holds its key (the handshake's
/// signatures), as encryption needs.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error that failed a TLS handshake, if that is what `error` is.
fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    std::error::Error::source(error)?
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

/// A TLS failure that retrying cannot fix: the handshake failed on the certificate or the
/// protocol (not on the socket), or the server has no TLS under `sslmode=require`.
fn tls_error_is_permanent(error: &tokio_postgres::Error) -> bool {
    if rustls_error(error).is_some() {
        return true;
    }
    // tokio-postgres' own negotiation errors ("server does not support TLS", "no hostname
    // provided for TLS handshake") carry no I/O error; a socket failure mid-handshake does.
    error.to_string() == "error performing TLS handshake"
        && std::error::Error::source(error).is_some_and(|source| !source.is::<std::io::Error>())
}

/// What to do about a failed certificate, for the error message.
fn tls_hint(error: &tokio_postgres::Error) -> Option<&'static str> {
    use rustls::CertificateError;
    match rustls_error(error)? {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => Some(
            "the server's certificate does not name the URL's host: connect by a host name the \
             certificate lists",
        ),
        rustls::Error::InvalidCertificate(_) => Some(
            "the server's certificate is not trusted: give its CA (a PEM file) in \
             PostgresOptions::root_certificates, or, for development only, set \
             PostgresOptions::danger_accept_invalid_certificates",
        ),
        _ => None,
    }
}

impl PostgresStore {
    /// A store on the database at `url` (`postgres://user:password@host:port/db`, or a
    /// key-value connection string) with default options. Connections open on first use.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// A store on the database at `url` with `options`. Connections open on first use.
    ///
    /// # TLS
    ///
    /// The URL's `sslmode` decides, for every connection of the store (both pools and the
    /// notification listener), with rustls:
    ///
    /// - `disable`: plain connections.
    /// - `prefer` (the default, as in libpq): TLS when the server offers it, plain otherwise.
    ///   As in libpq, the certificate is not verified: whoever can intercept the connection
    ///   could also make it plain, so `prefer` only guards against eavesdropping, and a server
    ///   with a self-signed certificate (the default of Debian's and Ubuntu's packages) keeps
    ///   working.
    /// - `require`: TLS or no connection, and (unlike libpq, which needs `verify-full` for
    ///   that) the certificate is verified: its chain against the system's roots, Mozilla's
    ///   (webpki-roots) and [`PostgresOptions::root_certificates`], and its names against the
    ///   URL's host. [`PostgresOptions::danger_accept_invalid_certificates`] turns the
    ///   verification off.
    ///
    /// A certificate that fails verification, or a server without TLS under `require`, fails
    /// the operation at once (it is not retried as a connection fault).
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("invalid PostgreSQL URL: {e}")))?;
        let tls = tls_connector(&config, &options)?;
        if let Some(schema) = &options.schema {
            let valid = !schema.is_empty()
                && schema.len() <= 50
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(Error::Config(format!(
                    "invalid PostgreSQL schema name {schema:?}: use 1 to 50 letters, digits or '_'"
                )));
            }
            let mut server_options = config.get_options().unwrap_or_default().to_owned();
            if !server_options.is_empty() {
                server_options.push(' ');
            }
            server_options.push_str(&format!("-c search_path={schema}"));
            config.options(&server_options);
        }
        if !options.synchronous_commit {
            let mut server_options = config.get_options().unwrap_or_default().to_owned();
            if !server_options.is_empty() {
                server_options.push(' ');
            }
            server_options.push_str("-c synchronous_commit=off");
            config.options(&server_options);
        }
        if config.get_application_name().is_none() {
            config.application_name("durably");
        }
        config.connect_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(10));
        let pool = build_pool(
            &config,
            &tls,
            options.max_connections.max(1),
            &options,
            None,
        )?;
        let batch_connections = if options.group_commit {
            batch::CONNECTIONS
        } else {
            options.max_connections.max(1)
        };
        // The lease-holder batches get their own connections, with the planner settings their
        // statements need set once per session (see [`batch::PLANNER_SETTINGS`]).
        let batch_pool = build_pool(
            &config,
            &tls,
            batch_connections,
            &options,
            Some(batch::PLANNER_SETTINGS),
        )?;
        let channel = match &options.schema {
            Some(schema) => format!("durably_{schema}"),
            None => "durably".to_owned(),
        };
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                pool,
                batch_pool,
                config,
                tls,
                channel,
                origin: crate::time::new_id(),
                schema: options.schema,
                retry_for: options.retry_for,
                group_commit: options.group_commit,
                commit_delay: options.commit_delay,
                counters: Arc::default(),
                notices: Arc::new(Mutex::new(None)),
                batcher: Mutex::new(None),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Group-commit counters: the batches of step writes and completions executed (with group
    /// commit off, one per write) and the writes they carried.
    pub fn stats(&self) -> crate::WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        crate::WriterStats {
            transactions: self.shared.counters.batches.load(Relaxed),
            operations: self.shared.counters.writes.load(Relaxed),
        }
    }

    /// The schema this store works in, if one was configured.
    pub fn schema(&self) -> Option<&str> {
        self.shared.schema.as_deref()
    }

    /// Drops this store's schema with everything in it (`DROP SCHEMA … CASCADE`); for tools and
    /// benchmarks that work in a throw-away schema. Does nothing without a configured schema.
    pub async fn drop_schema(&self) -> Result<()> {
        let Some(schema) = self.shared.schema.clone() else {
            return Ok(());
        };
        self.run("drop_schema", false, |client, _| {
            let schema = schema.clone();
            async move {
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&schema)))
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// The `LISTEN/NOTIFY` channel of this store's schema.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Runs `sql` (retried on transient faults: a read, or a write whose retry recognises its
    /// own earlier commit) and maps each row it returns.
    ///
    /// Dropping the returned future while the statement runs cancels it on the server (see
    /// [`CancelOnDrop`]).
    async fn read<T>(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: fn(&Row) -> std::result::Result<T, Fail>,
    ) -> Result<Vec<T>> {
        self.run(operation, true, |client, _| async move {
            let client = CancelOnDrop::new(client, &self.shared.tls);
            let statement = client.prepare_cached(sql).await?;
            let rows = client.query(&statement, params).await?;
            client.finished();
            rows.iter().map(map).collect()
        })
        .await
    }

    /// [`PostgresStore::read`] bounded by the server's `statement_timeout` (`SET LOCAL`, in a
    /// read-only transaction pipelined with the statement: one round trip). A statement that
    /// outlives it fails with [`Error::Timeout`].
    async fn read_within<T>(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: fn(&Row) -> std::result::Result<T, Fail>,
        timeout: Duration,
    ) -> Result<Vec<T>> {
        let set_timeout = format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
            timeout.as_millis().clamp(1, i32::MAX as u128)
        );
        let set_timeout = &set_timeout;
        let outcome = self
            .run(operation, true, |client, _| async move {
                let client = CancelOnDrop::new(client, &self.shared.tls);
                let statement = client.prepare_cached(sql).await?;
                let (began, rows, committed) = futures::join!(
                    client.batch_execute(set_timeout),
                    client.query(&statement, params),
                    client.batch_execute("COMMIT"),
                );
                let outcome = match began.and(rows) {
                    Ok(rows) => rows
                        .iter()
                        .map(map)
                        .collect::<std::result::Result<Vec<T>, Fail>>()
                        .map(Ok),
                    Err(error) if is_query_cancelled(&error) => Ok(Err(())),
                    Err(error) => Err(Fail::Db(error)),
                };
                committed?;
                client.finished();
                outcome
            })
            .await?;
        outcome.map_err(|()| super::read_timeout(operation, timeout))
    }

    /// Runs `attempt` on a pooled connection; when the connection fails in a way that leaves the
    /// outcome unknown (connection closed, server shutting down, pool timeout) and `retry` is set,
    /// tries again with a fresh connection for up to [`PostgresOptions::retry_for`]. `attempt`
    /// gets the attempt number (0 first) so it can recognise its own earlier commit.
    async fn run<T, F, Fut>(&self, operation: &'static str, retry: bool, attempt: F) -> Result<T>
    where
        F: Fn(Object, u32) -> Fut,
        Fut: Future<Output = std::result::Result<T, Fail>>,
    {
        let deadline = tokio::time::Instant::now() + self.shared.retry_for;
        let mut tries: u32 = 0;
        loop {
            let outcome = match self.shared.pool.get().await {
                Ok(client) => attempt(client, tries).await,
                Err(error) => Err(Fail::Pool(error)),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(fail) => {
                    let wait = Duration::from_millis(50u64 << tries.min(4));
                    if !retry
                        || !fail.is_transient()
                        || tokio::time::Instant::now() + wait > deadline
                    {
                        return Err(fail.into_error(operation));
                    }
                    let error = fail.describe();
                    tracing::debug!(operation, %error, "PostgreSQL operation failed; retrying");
                    if tries == 0 {
                        self.report_fault(operation, error);
                    }
                    tries += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Runs a write through the group-commit task (started on first use), or on its own when
    /// group commit is off.
    /// Completes a run through the write batcher, claiming `claim` in the same transaction.
    async fn complete(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        drop_steps: bool,
        claim: Option<(ClaimRequest, Timestamp)>,
    ) -> Result<(bool, Vec<Run>)> {
        let output = output
            .as_ref()
            .map(|o| to_json("complete_run", o))
            .transpose()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batch(
            "complete_run",
            batch::Request::Complete(batch::CompleteRequest {
                run_id: fence.run_id.clone(),
                generation: fence.generation,
                output,
                now: now.to_string(),
                drop_steps,
                claim,
                reply,
            }),
        )
        .await?;
        let (completed, claimed, unlooked) = answer
            .await
            .map_err(|_| Error::storage("complete_run", "the PostgreSQL write task stopped"))??;
        if unlooked {
            // The worker takes an empty hand-off as "nothing claimable"; tell it to look.
            self.notice(StoreNotice::RunsAvailable);
        }
        Ok((completed, claimed))
    }

    /// Inserts one prepared run (upstream §5.5), retrying lost races and lost connections; a
    /// retry recognises the row an earlier attempt committed by its id.
    async fn enqueue_prepared(&self, run: &NewRun, prepared: &Prepared) -> Result<Enqueued> {
        let channel = &self.shared.channel;
        for round in 0..3 {
            let outcome = self
                .run("enqueue", true, |client, _| async move {
                    let statement = client.prepare_cached(&prepared.sql()).await?;
                    let rows = client.query(&statement, &prepared.params(channel)).await?;
                    resolve(run, prepared, &rows)
                })
                .await?;
            match outcome {
                Some(result) => return result,
                None if round < 2 => continue,
                None => {}
            }
        }
        Err(conflict_after_retry(run))
    }

    /// One attempt at [`Store::enqueue_and_claim`] in one transaction: the enqueue and the
    /// claim's first statement pipelined between `BEGIN` and `COMMIT`; the claim claims only if
    /// the enqueue inserted its run, so a rejected or lost enqueue claims nothing. Returns the
    /// enqueue's outcome (`None` when it lost a race or the attempt failed), the keyless runs
    /// leased, and whether claimable runs with a concurrency key were left for the keyed claim.
    ///
    /// Never retried: a claim whose commit went unacknowledged leaves its runs leased to
    /// nobody until their leases expire, as with [`Store::claim`].
    async fn enqueue_then_claim_once(
        &self,
        run: &NewRun,
        prepared: &Prepared,
        next: &ClaimRequest,
        now: Timestamp,
    ) -> (Option<Result<Enqueued>>, Vec<Run>, bool) {
        let channel = &self.shared.channel;
        let claim_sql = claim_after_insert_sql();
        let now_text = now.to_string();
        let expires = (now + next.lease).to_string();
        let limit = next.max.min(i64::MAX as usize) as i64;
        let attempt = async {
            let client = self.shared.pool.get().await.map_err(Fail::Pool)?;
            let enqueue = client.prepare_cached(&prepared.sql()).await?;
            let claim = client.prepare_cached(&claim_sql).await?;
            let enqueue_params = prepared.params(channel);
            let claim_params: [&(dyn ToSql + Sync); 5] =
                [&now_text, &limit, &next.worker_id, &expires, &prepared.id];
            // Pipelined: all four go out at once; after a failed statement the rest fail and
            // `COMMIT` rolls back.
            let (began, enqueued, claimed, committed) = futures::join!(
                client.batch_execute("BEGIN"),
                client.query(&enqueue, &enqueue_params),
                client.query(&claim, &claim_params),
                client.batch_execute("COMMIT")
            );
            began?;
            let (enqueued, claimed) = (enqueued?, claimed?);
            committed?;
            let mut runs = Vec::new();
            let mut keyed = false;
            for row in &claimed {
                if row.try_get::<_, bool>(0)? {
                    keyed = true;
                } else {
                    runs.push(run_from_row(row, 3)?);
                }
            }
            Ok::<_, Fail>((resolve(run, prepared, &enqueued)?, runs, keyed))
        };
        match attempt.await {
            Ok((enqueued, runs, keyed)) => (enqueued, runs, keyed),
            Err(fail) => {
                tracing::debug!(error = %fail.describe(), "enqueue with claim failed; enqueuing alone");
                (None, Vec::new(), false)
            }
        }
    }

    /// Inserts runs without idempotency or concurrency keys (nothing to look up, nothing
    /// they can collide with) in one statement over arrays, with their labels and one notice.
    /// A retry after a lost connection skips the rows its earlier attempt committed: the ids
    /// are chosen before the first attempt.
    async fn enqueue_plain(
        &self,
        runs: &[NewRun],
        prepared: &[Prepared],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>> {
        let ids: Vec<&str> = prepared.iter().map(|p| p.id.as_str()).collect();
        let job_names: Vec<&str> = prepared.iter().map(|p| p.job_name.as_str()).collect();
        let inputs: Vec<&str> = prepared.iter().map(|p| p.input.as_str()).collect();
        let labels: Vec<&str> = prepared.iter().map(|p| p.labels.as_str()).collect();
        let mut label_runs = Vec::new();
        let (mut label_keys, mut label_values) = (Vec::new(), Vec::new());
        for p in prepared {
            for (key, value) in p.label_keys.iter().zip(&p.label_values) {
                label_runs.push(p.id.as_str());
                label_keys.push(key.as_str());
                label_values.push(value.as_str());
            }
        }
        let stamp = now.to_string();
        let channel = &self.shared.channel;
        let sql = format!(
            "WITH req AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
               WITH ORDINALITY AS t(id, job_name, input, labels, ord)), \
             ins AS (INSERT INTO durably_runs (id, job_name, input, status, labels, \
               current_step_index, completed_step_count, lease_generation, created_at, updated_at) \
               SELECT id, job_name, input, 'pending', labels, 0, 0, 0, $5::text, $5::text \
               FROM req ORDER BY ord ON CONFLICT (id) DO NOTHING RETURNING id), \
             lab AS (INSERT INTO durably_run_labels (run_id, key, value) \
               SELECT * FROM unnest($6::text[], $7::text[], $8::text[]) ON CONFLICT DO NOTHING), \
             note AS (SELECT pg_notify($9::text, '{NOTICE_RUNS}') FROM ins LIMIT 1) \
             SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM note)"
        );
        self.run("enqueue_many", true, |client, _| {
            let sql = &sql;
            let params: [&(dyn ToSql + Sync); 9] = [
                &ids,
                &job_names,
                &inputs,
                &labels,
                &stamp,
                &label_runs,
                &label_keys,
                &label_values,
                channel,
            ];
            async move {
                let statement = client.prepare_cached(sql).await?;
                client.query(&statement, &params).await?;
                Ok(())
            }
        })
        .await?;
        Ok(runs
            .iter()
            .zip(prepared)
            .map(|(run, p)| Enqueued {
                run: pending_run(p.id.clone(), run, now),
                disposition: Disposition::Created,
            })
            .collect())
    }

    async fn batch(&self, operation: &'static str, request: batch::Request) -> Result<()> {
        let notices = self.shared.notices.clone();
        let report: batch::FaultReporter =
            Arc::new(move |operation, error| report_fault(&notices, operation, error));
        if !self.shared.group_commit {
            batch::execute_one(
                &self.shared.batch_pool,
                &self.shared.channel,
                self.shared.retry_for,
                &report,
                request,
                &self.shared.counters,
            )
            .await;
            return Ok(());
        }
        let mut slot = self
            .shared
            .batcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = batch::spawn(
                self.shared.batch_pool.clone(),
                self.shared.channel.clone(),
                self.shared.retry_for,
                report,
                batch::BatchSettings {
                    commit_delay: self.shared.commit_delay,
                    counters: self.shared.counters.clone(),
                },
            );
        }
        let sender = slot.as_ref().ok_or_else(|| {
            Error::storage(operation, "no tokio runtime for the PostgreSQL store")
        })?;
        sender
            .send(request)
            .map_err(|_| Error::storage(operation, "the PostgreSQL write task has stopped"))
    }

    /// Sends a notice to the workers of this process that listen (if any).
    fn notice(&self, notice: StoreNotice) {
        send_notice(&self.shared.notices, notice);
    }

    /// Tells listening workers (if any) that an operation is being retried after a fault.
    fn report_fault(&self, operation: &'static str, error: String) {
        report_fault(&self.shared.notices, operation, error);
    }

    fn notice_sender(&self) -> Option<broadcast::Sender<StoreNotice>> {
        let mut slot = self
            .shared
            .notices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = slot.as_ref() {
            return Some(sender.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (sender, _) = broadcast::channel(1024);
        handle.spawn(listen_loop(
            self.shared.config.clone(),
            self.shared.tls.clone(),
            self.shared.channel.clone(),
            self.shared.origin.clone(),
            sender.clone(),
            self.shared.stop.clone(),
        ));
        *slot = Some(sender.clone());
        Some(sender)
    }
}

/// Tells listening workers (if any) that an operation is being retried after a fault.
fn report_fault(
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
fn send_notice(notices: &Mutex<Option<broadcast::Sender<StoreNotice>>>, notice: StoreNotice) {
    let slot = notices
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(sender) = slot.as_ref() {
        let _ = sender.send(notice);
    }
}

/// Why one attempt failed.
enum Fail {
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
fn is_query_cancelled(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "57014")
}

/// A pooled connection whose statement is cancelled on the server when the future using it is
/// dropped before [`CancelOnDrop::finished`] (an HTTP client that went away, a timeout): the
/// connection leaves the pool (so that the cancel request cannot reach a later statement of
/// another caller), a task sends the cancel request, then closes the connection. Without it a
/// dropped read ran on to its end, holding a connection and a server process.
struct CancelOnDrop {
    client: Option<Object>,
    tls: MakeRustlsConnect,
}

impl CancelOnDrop {
    fn new(client: Object, tls: &MakeRustlsConnect) -> Self {
        CancelOnDrop {
            client: Some(client),
            tls: tls.clone(),
        }
    }

    /// The statement ended: the connection goes back to the pool when dropped.
    fn finished(mut self) {
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

fn db_error_is_transient(error: &tokio_postgres::Error) -> bool {
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
    fn is_transient(&self) -> bool {
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

    fn describe(&self) -> String {
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

    fn into_error(self, operation: &'static str) -> Error {
        match self {
            Fail::Other(error) => error,
            other => Error::storage(operation, other.describe()),
        }
    }
}

/// The server's message (with its SQLSTATE) rather than tokio-postgres' generic "db error".
fn db_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match (std::error::Error::source(error), tls_hint(error)) {
            (Some(source), Some(hint)) => format!("{error}: {source} ({hint})"),
            (Some(source), None) => format!("{error}: {source}"),
            (None, _) => error.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

const RUN_COLUMNS: &str = "id, job_name, input, status, idempotency_key, concurrency_key, \
    current_step_index, completed_step_count, progress, output, error, labels, lease_owner, \
    lease_expires_at, lease_generation, started_at, completed_at, created_at, updated_at";

const STEP_COLUMNS: &str =
    "id, run_id, name, \"index\", status, output, error, started_at, completed_at";

const LOG_COLUMNS: &str = "id, run_id, step_name, level, message, data, created_at";

/// The status list of terminal runs, for SQL.
const TERMINAL: &str = "('completed', 'failed', 'cancelled')";

/// `RUN_COLUMNS` qualified by `alias`.
/// How many columns [`run_from_row`] reads.
fn run_column_count() -> usize {
    RUN_COLUMNS.split(", ").count()
}

fn run_columns(alias: &str) -> String {
    RUN_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn corrupt(what: String) -> Fail {
    Fail::Other(Error::storage("decode", what))
}

fn timestamp(text: &str) -> std::result::Result<Timestamp, Fail> {
    Timestamp::parse(text).ok_or_else(|| corrupt(format!("invalid timestamp {text:?}")))
}

fn get_ts(row: &Row, idx: usize) -> std::result::Result<Timestamp, Fail> {
    let text: String = row.try_get(idx)?;
    timestamp(&text)
}

fn get_opt_ts(row: &Row, idx: usize) -> std::result::Result<Option<Timestamp>, Fail> {
    let text: Option<String> = row.try_get(idx)?;
    text.as_deref().map(timestamp).transpose()
}

fn get_int(row: &Row, idx: usize) -> std::result::Result<i64, Fail> {
    Ok(i64::from(row.try_get::<_, i32>(idx)?))
}

/// A run from `RUN_COLUMNS` starting at column `at`.
fn run_from_row(row: &Row, at: usize) -> std::result::Result<Run, Fail> {
    let input: String = row.try_get(at + 2)?;
    let status: String = row.try_get(at + 3)?;
    let progress: Option<String> = row.try_get(at + 8)?;
    let labels: String = row.try_get(at + 11)?;
    Ok(Run {
        id: row.try_get(at)?,
        job_name: row.try_get(at + 1)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        status: status
            .parse()
            .map_err(|_| corrupt(format!("invalid run status {status:?}")))?,
        idempotency_key: row.try_get(at + 4)?,
        concurrency_key: row.try_get(at + 5)?,
        current_step_index: get_int(row, at + 6)?,
        completed_step_count: get_int(row, at + 7)?,
        progress: parse_optional_json(progress).and_then(|v| serde_json::from_value(v).ok()),
        output: parse_optional_json(row.try_get(at + 9)?),
        error: row.try_get(at + 10)?,
        labels: parse_labels(&labels),
        lease_owner: row.try_get(at + 12)?,
        lease_expires_at: get_opt_ts(row, at + 13)?,
        lease_generation: get_int(row, at + 14)?,
        started_at: get_opt_ts(row, at + 15)?,
        completed_at: get_opt_ts(row, at + 16)?,
        created_at: get_ts(row, at + 17)?,
        updated_at: get_ts(row, at + 18)?,
    })
}

fn step_from_row(row: &Row) -> std::result::Result<Step, Fail> {
    let status: String = row.try_get(4)?;
    Ok(Step {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        name: row.try_get(2)?,
        index: get_int(row, 3)?,
        status: StepStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("invalid step status {status:?}")))?,
        output: parse_optional_json(row.try_get(5)?),
        error: row.try_get(6)?,
        started_at: get_ts(row, 7)?,
        completed_at: get_opt_ts(row, 8)?,
    })
}

fn log_from_row(row: &Row) -> std::result::Result<Log, Fail> {
    let level: String = row.try_get(3)?;
    Ok(Log {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        step_name: row.try_get(2)?,
        level: LogLevel::parse(&level)
            .ok_or_else(|| corrupt(format!("invalid log level {level:?}")))?,
        message: row.try_get(4)?,
        data: parse_optional_json(row.try_get(5)?),
        created_at: get_ts(row, 6)?,
    })
}

fn to_json(operation: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::storage(operation, e))
}

fn count_bool(row: &Row, idx: usize) -> std::result::Result<bool, Fail> {
    Ok(row.try_get::<_, bool>(idx)?)
}

fn count(row: &Row, idx: usize) -> std::result::Result<i64, Fail> {
    Ok(row.try_get::<_, i64>(idx)?)
}

// ---------------------------------------------------------------------------------------------
// SQL

/// Notification payload: runs may be claimable.
const NOTICE_RUNS: &str = "runs";
/// Notification payload prefix: `cancel:<origin store>:<run id>`.
const NOTICE_CANCEL: &str = "cancel:";

/// One enqueue as one statement: the run's own earlier commit (a retry) → idempotency key →
/// oldest pending run of the job+key → insert (with its labels, and a `NOTIFY`).
/// `kind`: 0 idempotent, 1 pending run of the key exists, 2 created.
fn enqueue_sql() -> String {
    format!(
        "WITH mine AS (SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = $4), \
         idem AS (SELECT {RUN_COLUMNS} FROM durably_runs WHERE $2::text IS NOT NULL \
           AND job_name = $1 AND idempotency_key = $2 AND NOT EXISTS (SELECT 1 FROM mine)), \
         pend AS (SELECT {RUN_COLUMNS} FROM durably_runs WHERE $3::text IS NOT NULL \
           AND job_name = $1 AND concurrency_key = $3 AND status = 'pending' \
           AND NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM idem) \
           ORDER BY created_at ASC, id ASC LIMIT 1), \
         ins AS (INSERT INTO durably_runs (id, job_name, input, status, idempotency_key, \
           concurrency_key, labels, current_step_index, completed_step_count, lease_generation, \
           created_at, updated_at) \
           SELECT $4::text, $1::text, $5::text, 'pending', $2::text, $3::text, $6::text, 0, 0, 0, \
           $7::text, $7::text WHERE NOT EXISTS (SELECT 1 FROM mine) \
           AND NOT EXISTS (SELECT 1 FROM idem) AND NOT EXISTS (SELECT 1 FROM pend) \
           ON CONFLICT DO NOTHING RETURNING {RUN_COLUMNS}), \
         lab AS (INSERT INTO durably_run_labels (run_id, key, value) \
           SELECT ins.id, l.k, l.v FROM ins, unnest($8::text[], $9::text[]) AS l(k, v)), \
         note AS (SELECT pg_notify($10::text, '{NOTICE_RUNS}') FROM ins LIMIT 1) \
         SELECT 2 AS kind, {RUN_COLUMNS} FROM mine \
         UNION ALL SELECT 0, {RUN_COLUMNS} FROM idem \
         UNION ALL SELECT 1, {RUN_COLUMNS} FROM pend \
         UNION ALL SELECT 2, {RUN_COLUMNS} FROM ins WHERE (SELECT count(*) FROM note) >= 0"
    )
}

/// Only the idempotency lookup (a request whose labels are invalid may still be idempotent).
fn idempotency_sql() -> String {
    format!(
        "SELECT 0 AS kind, {RUN_COLUMNS} FROM durably_runs WHERE job_name = $1 AND idempotency_key = $2"
    )
}

/// The parameter values of a `get_runs` statement that are computed from its filter.
struct RunsValues<'a> {
    limit: Option<i64>,
    offset: i64,
    /// Runs taken from each status slice of a page: `limit + offset`.
    per_status: i64,
    /// The statuses asked for, or all of them.
    statuses: Vec<&'static str>,
    /// The label filters' keys and values, in the same order.
    label_keys: Vec<&'a str>,
    label_values: Vec<&'a str>,
    label_count: i64,
}

impl<'a> RunsValues<'a> {
    fn new(filter: &'a RunFilter) -> Self {
        let limit = filter.limit.map(|l| l.min(i64::MAX as u64) as i64);
        let offset = filter.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
        // Each status once, whatever the filter repeats.
        let statuses = RunStatus::ALL
            .into_iter()
            .filter(|status| filter.statuses.is_empty() || filter.statuses.contains(status))
            .map(|status| status.as_str())
            .collect();
        RunsValues {
            limit,
            offset,
            per_status: limit.unwrap_or(0).saturating_add(offset),
            statuses,
            label_keys: filter.labels.keys().map(String::as_str).collect(),
            label_values: filter.labels.values().map(String::as_str).collect(),
            label_count: filter.labels.len() as i64,
        }
    }
}

/// The statement listing the runs `filter` selects, newest first, with its parameters.
fn runs_query<'a>(
    filter: &'a RunFilter,
    values: &'a RunsValues<'a>,
) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    // The job-name and label conditions, shared by both query shapes below.
    let mut conditions = String::new();
    if !filter.job_names.is_empty() {
        params.push(&filter.job_names);
        conditions.push_str(&format!(" AND r.job_name = ANY(${}::text[])", params.len()));
    }
    // The statement's text depends on whether there are no, one or several labels, never on
    // how many: their keys and values go in as two arrays. Planning stays constant (one
    // `EXISTS` per label made planning grow explosively: 100 labels took 1.1 s, 300 took 54 s)
    // and execution linear: the first label is an `EXISTS` the planner may drive the query
    // from (the `(key, value)` index); then the labels of each candidate run, read through
    // the `(run_id, key)` index whatever the table's statistics say, are compared with the
    // filter value of their key, and all must be there.
    if let (Some(key), Some(value)) = (values.label_keys.first(), values.label_values.first()) {
        params.push(key);
        params.push(value);
        conditions.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM durably_run_labels l WHERE l.run_id = r.id \
             AND l.key = ${} AND l.value = ${})",
            params.len() - 1,
            params.len()
        ));
    }
    if values.label_count > 1 {
        params.push(&values.label_keys);
        params.push(&values.label_values);
        params.push(&values.label_count);
        conditions.push_str(&format!(
            " AND (SELECT count(*) FROM durably_run_labels l WHERE l.run_id = r.id \
             AND l.value = (${}::text[])[array_position(${}::text[], l.key)]) = ${}::bigint",
            params.len() - 1,
            params.len() - 2,
            params.len()
        ));
    }
    let order = "ORDER BY created_at DESC, id DESC";
    let sql = if values.limit.is_some() {
        // A page: schema v1 has no index on `created_at` alone, so instead of sorting every
        // matching run (a parallel sequential scan of the table: 100 ms for 220,000 runs), take
        // the newest `offset + limit` of each status from its `(status, created_at)` index slice
        // (the pending ones from durably's own pending-order index) and merge those few.
        params.push(&values.per_status);
        let per_status = params.len();
        // Each status is written into the statement (they are the fixed `RunStatus` names),
        // so the planner of the pending slice sees that its partial index applies.
        let parts: Vec<String> = values
            .statuses
            .iter()
            .map(|status| {
                format!(
                    "(SELECT {RUN_COLUMNS} FROM durably_runs r WHERE r.status = '{status}'\
                     {conditions} ORDER BY r.created_at DESC, r.id DESC \
                     LIMIT ${per_status}::bigint)"
                )
            })
            .collect();
        params.push(&values.limit);
        params.push(&values.offset);
        format!(
            "SELECT {RUN_COLUMNS} FROM ({}) r {order} LIMIT ${}::bigint OFFSET ${}::bigint",
            parts.join(" UNION ALL "),
            params.len() - 1,
            params.len()
        )
    } else {
        // Everything from `offset` on: one query.
        if !filter.statuses.is_empty() {
            params.push(&values.statuses);
            conditions.push_str(&format!(" AND r.status = ANY(${}::text[])", params.len()));
        }
        params.push(&values.offset);
        format!(
            "SELECT {RUN_COLUMNS} FROM durably_runs r WHERE true{conditions} {order} \
             OFFSET ${}::bigint",
            params.len()
        )
    };
    (sql, params)
}

/// A run's key is free when no *other* run holding that key has an unexpired lease at `now`
/// (a placeholder), leaving out leases that `ending` (SQL over `o`, or empty) says end with the
/// statement.
fn key_is_free(now: &str, ending: &str) -> String {
    format!(
        "(r.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs o \
         WHERE o.status = 'leased' AND o.concurrency_key = r.concurrency_key AND o.id <> r.id \
         AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at > {now}{ending}))"
    )
}

/// Claim, first statement: the oldest `$2` claimable runs (locked, skipping runs other claimers
/// hold); those without a concurrency key are leased at once. Returns one row per candidate:
/// `(has_key, candidate id, key, leased run columns or NULLs)`.
fn claim_sql() -> String {
    claim_sql_when("")
}

/// [`claim_sql`] that claims only if the run with id `$5` exists: in the transaction of an
/// enqueue, only when that enqueue inserted its run.
fn claim_after_insert_sql() -> String {
    claim_sql_when(" AND EXISTS (SELECT 1 FROM durably_runs n WHERE n.id = $5)")
}

fn claim_sql_when(condition: &str) -> String {
    let leased = run_columns("won");
    format!(
        "WITH {} SELECT c.concurrency_key IS NOT NULL AS keyed, c.id, c.concurrency_key, \
         {leased} FROM c LEFT JOIN won ON won.id = c.id ORDER BY c.created_at ASC, c.id ASC",
        claim_ctes(&ClaimPlaceholders::numbered_from(1, ""), condition)
    )
}

/// Where a claim's parameters are in its statement.
pub(super) struct ClaimPlaceholders {
    pub now: String,
    pub limit: String,
    pub worker: String,
    pub expires: String,
    /// A condition over `o` (after `AND`, or empty) true of runs whose leases end with the
    /// statement: their keys count as free when picking keyed candidates (which only the keyed
    /// claim, under the keys' locks and in a later snapshot, leases).
    pub ending: &'static str,
}

impl ClaimPlaceholders {
    /// Parameters `$first` now, then limit, worker and lease expiry.
    pub(super) fn numbered_from(first: usize, ending: &'static str) -> Self {
        let number = |offset: usize| format!("${}", first + offset);
        ClaimPlaceholders {
            now: number(0),
            limit: number(1),
            worker: number(2),
            expires: number(3),
            ending,
        }
    }
}

/// The common table expressions of a claim (`p`, `e`, `c`, `won`), for a `WITH` list: `c` holds
/// the oldest `limit` claimable runs that match `condition` (locked, skipping runs other
/// claimers hold), `won` those of them without a concurrency key, leased.
pub(super) fn claim_ctes(at: &ClaimPlaceholders, condition: &str) -> String {
    let returning = run_columns("r");
    let ClaimPlaceholders {
        now,
        limit,
        worker,
        expires,
        ending,
    } = at;
    let key_is_free = key_is_free(now, ending);
    format!(
        "p AS (SELECT r.id, r.concurrency_key, r.created_at FROM durably_runs r \
           WHERE r.status = 'pending' AND {key_is_free}{condition} \
           ORDER BY r.created_at ASC, r.id ASC LIMIT {limit} FOR UPDATE OF r SKIP LOCKED), \
         e AS (SELECT r.id, r.concurrency_key, r.created_at FROM durably_runs r \
           WHERE r.status = 'leased' AND r.lease_expires_at IS NOT NULL \
           AND r.lease_expires_at <= {now} AND {key_is_free}{condition} \
           ORDER BY r.created_at ASC, r.id ASC LIMIT {limit} FOR UPDATE OF r SKIP LOCKED), \
         c AS (SELECT id, concurrency_key, created_at FROM \
           (SELECT * FROM p UNION ALL SELECT * FROM e) a ORDER BY created_at ASC, id ASC \
           LIMIT {limit}), \
         won AS (UPDATE durably_runs r SET status = 'leased', lease_owner = {worker}, \
           lease_expires_at = {expires}, lease_generation = r.lease_generation + 1, \
           started_at = COALESCE(r.started_at, {now}), updated_at = {now} \
           FROM c WHERE r.id = c.id AND c.concurrency_key IS NULL RETURNING {returning})"
    )
}

/// The transaction-local setting that carries a claim's keyed candidates, as a JSON array of
/// keys, from the statement that finds them to the one that locks them and the one that leases
/// their runs: the three can then be sent at once (pipelined), each reading what the one before
/// wrote.
pub(super) const CLAIM_KEYS: &str = "durably.claim_keys";

/// The keys in [`CLAIM_KEYS`] (`'[]'` when unset), as JSON.
fn claim_keys_json() -> String {
    format!("COALESCE(NULLIF(current_setting('{CLAIM_KEYS}', true), ''), '[]')::json")
}

/// Claim, keyed runs: the transaction advisory lock of each key, *tried*; [`CLAIM_KEYS`] keeps
/// the keys whose lock this transaction now holds. The keys are `$1` (a JSON array), or the
/// setting when `$1` is NULL. A key whose lock another claimer holds is being claimed by it;
/// waiting would hold the locks taken so far meanwhile, and the TypeScript runtime's claim
/// takes a key's lock while it holds other keys' locks and a run's row lock, so waiting could
/// close a deadlock. Never waiting for a lock nor a row, a claim cannot be part of one.
pub(super) fn lock_claim_keys_sql() -> String {
    let keys = claim_keys_json();
    format!(
        "SELECT set_config('{CLAIM_KEYS}', COALESCE((SELECT json_agg(t.k)::text \
           FROM json_array_elements_text(COALESCE($1::text::json, {keys})) AS t(k) \
           WHERE pg_try_advisory_xact_lock(hashtext(t.k))), '[]'), true)"
    )
}

/// Claim, keyed runs, after [`lock_claim_keys_sql`] in the same transaction (a statement of its
/// own, so its fresh snapshot sees every lease committed by whoever held a lock before): for
/// each locked key that no unexpired lease holds, lease its oldest claimable run (runs sharing a
/// key go oldest first, across job names). `$1` worker, `$2` lease expiry, `$3` now.
///
/// A key's oldest pending run comes from durably's index `durably_rs_runs_pending_key_order`. A run whose row
/// another claimer holds locked is skipped (`SKIP LOCKED`), its key left for this round, never
/// waited for: the TypeScript runtime's claim locks a run's row *before* it takes the key's
/// advisory lock, so waiting for that row while holding the key's lock is a deadlock
/// (PostgreSQL aborts one of the two claims; tests/interop.rs found it). That claimer leases the
/// run, or the worker looks again.
pub(super) fn claim_keyed_sql() -> String {
    let returning = run_columns("r");
    let keys = claim_keys_json();
    let claimable = "(r.status = 'pending' \
           OR (r.status = 'leased' AND r.lease_expires_at IS NOT NULL AND r.lease_expires_at <= $3))";
    format!(
        "WITH locked AS (SELECT DISTINCT t.k FROM json_array_elements_text({keys}) AS t(k)), \
         oldest AS (SELECT x.id FROM locked l CROSS JOIN LATERAL ( \
             SELECT y.id, y.created_at FROM ( \
               (SELECT r.id, r.created_at FROM durably_runs r \
                 WHERE r.status = 'pending' AND r.concurrency_key = l.k \
                 ORDER BY r.created_at ASC, r.id ASC LIMIT 1) \
               UNION ALL \
               (SELECT r.id, r.created_at FROM durably_runs r \
                 WHERE r.status = 'leased' AND r.concurrency_key = l.k \
                 AND r.lease_expires_at IS NOT NULL AND r.lease_expires_at <= $3 \
                 ORDER BY r.created_at ASC, r.id ASC LIMIT 1)) y \
             ORDER BY y.created_at ASC, y.id ASC LIMIT 1) x \
           WHERE NOT EXISTS (SELECT 1 FROM durably_runs o WHERE o.status = 'leased' \
             AND o.concurrency_key = l.k AND o.id <> x.id \
             AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at > $3)), \
         pick AS (SELECT r.id FROM durably_runs r WHERE r.id IN (SELECT id FROM oldest) \
           AND {claimable} FOR UPDATE OF r SKIP LOCKED) \
         UPDATE durably_runs r SET status = 'leased', lease_owner = $1, lease_expires_at = $2, \
         lease_generation = r.lease_generation + 1, started_at = COALESCE(r.started_at, $3), \
         updated_at = $3 FROM pick WHERE r.id = pick.id AND {claimable} RETURNING {returning}"
    )
}

/// `status = 'leased' AND lease_generation = <fence>`: the condition of every lease-holder write.
const FENCED: &str = "id = $1 AND status = 'leased' AND lease_generation = $2::bigint";
/// [`FENCED`] for a table aliased `r`, after its first `r.`.
const FENCED_R: &str = "id = $1 AND r.status = 'leased' AND r.lease_generation = $2::bigint";

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        let schema = self.shared.schema.clone();
        self.run("migrate", true, |mut client, _| {
            let schema = schema.clone();
            async move {
                let tx = client.transaction().await?;
                // One migrator at a time per database (and schema): concurrent `CREATE ... IF
                // NOT EXISTS` can otherwise fail on the catalogs' unique indexes.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('durably_migrate:' || $1::text))",
                    &[&schema.clone().unwrap_or_default()],
                )
                .await?;
                if let Some(schema) = &schema {
                    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
                        .await?;
                }
                climb(&tx, &UPSTREAM).await?;
                climb(&tx, &POSTGRES_OWN).await?;
                tx.commit().await?;
                Ok(())
            }
        })
        .await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.run("schema_version", true, |client, _| async move {
            current_version(&client).await
        })
        .await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        let prepared = Prepared::new(&run, new_id_at(now), now)?;
        self.enqueue_prepared(&run, &prepared).await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let prepared = Prepared::new(&run, new_id_at(now), now)?;
        if next.max == 0 {
            return Ok((self.enqueue_prepared(&run, &prepared).await?, Vec::new()));
        }
        let (enqueued, mut claimed, keyed) = self
            .enqueue_then_claim_once(&run, &prepared, next, now)
            .await;
        let enqueued = match enqueued {
            Some(result) => result?,
            // Lost a race, or the attempt failed: the enqueue alone, with the same id, so a
            // retry recognises a row the attempt committed.
            None => self.enqueue_prepared(&run, &prepared).await?,
        };
        // Runs with a concurrency key need the claim's advisory-lock path.
        let room = next.max.saturating_sub(claimed.len());
        if keyed && room > 0 {
            match self.claim(&next.worker_id, now, next.lease, room).await {
                Ok(runs) => claimed.extend(runs),
                Err(error) => tracing::warn!(%error, "claim after enqueue failed"),
            }
        }
        Ok((enqueued, claimed))
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<Prepared> = runs
            .iter()
            .map(|run| Prepared::new(run, new_id_at(now), now))
            .collect::<Result<_>>()?;
        let channel = self.shared.channel.clone();
        let plain = runs
            .iter()
            .all(|run| run.idempotency_key.is_none() && run.concurrency_key.is_none());
        if plain {
            return self.enqueue_plain(&runs, &prepared, now).await;
        }
        for _round in 0..3 {
            let outcome = self
                .run("enqueue_many", true, |mut client, _| {
                    let (prepared, channel, runs) = (&prepared, &channel, &runs);
                    async move {
                        let full = client.prepare_cached(&enqueue_sql()).await?;
                        let idem = client.prepare_cached(&idempotency_sql()).await?;
                        let tx = client.transaction().await?;
                        let params: Vec<_> = prepared.iter().map(|p| p.params(channel)).collect();
                        // Pipelined: every statement is sent at once and executed in order, each
                        // seeing the ones before it.
                        let results = futures::future::join_all(prepared.iter().zip(&params).map(
                            |(p, params)| {
                                let statement = if p.labels_valid { &full } else { &idem };
                                tx.query(statement, &params[..])
                            },
                        ))
                        .await;
                        let mut out = Vec::with_capacity(results.len());
                        for ((run, p), rows) in runs.iter().zip(prepared).zip(results) {
                            match resolve(run, p, &rows?)? {
                                Some(Ok(enqueued)) => out.push(enqueued),
                                Some(Err(error)) => return Ok(Some(Err(error))), // rolls back
                                None => return Ok(None), // a concurrent insert won: retry
                            }
                        }
                        tx.commit().await?;
                        Ok(Some(Ok(out)))
                    }
                })
                .await?;
            if let Some(result) = outcome {
                return result;
            }
        }
        Err(Error::Conflict(
            "Conflict after retry for a batch trigger: concurrent triggers kept colliding with \
             its keys. Concurrent modification detected."
                .into(),
        ))
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = $1");
        let runs = self
            .read("get_run", &sql, &[&id], |row| run_from_row(row, 0))
            .await?;
        Ok(runs.into_iter().next())
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        let values = RunsValues::new(filter);
        let (sql, params) = runs_query(filter, &values);
        self.read("get_runs", &sql, &params, |row| run_from_row(row, 0))
            .await
    }

    async fn get_runs_within(&self, filter: &RunFilter, timeout: Duration) -> Result<Vec<Run>> {
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        let values = RunsValues::new(filter);
        let (sql, params) = runs_query(filter, &values);
        let read = self.read_within(
            "get_runs",
            &sql,
            &params,
            |row| run_from_row(row, 0),
            timeout,
        );
        // The server's timeout ends the statement; the client's (a little later) covers the
        // round trips around it and a server that does not answer.
        match tokio::time::timeout(timeout + Duration::from_millis(500), read).await {
            Ok(runs) => runs,
            Err(_) => Err(super::read_timeout("get_runs", timeout)),
        }
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM durably_steps WHERE run_id = $1 ORDER BY \"index\" ASC, id ASC"
        );
        self.read("get_steps", &sql, &[&run_id], step_from_row)
            .await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM durably_steps \
             WHERE run_id = $1 AND name = $2 AND status = 'completed'"
        );
        let steps = self
            .read("get_completed_step", &sql, &[&run_id, &name], step_from_row)
            .await?;
        Ok(steps.into_iter().next())
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM durably_logs WHERE run_id = $1 ORDER BY created_at ASC, id ASC"
        );
        self.read("get_logs", &sql, &[&run_id], log_from_row).await
    }

    async fn claim(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Run>> {
        let now_text = now.to_string();
        let expires = (now + lease).to_string();
        let first_sql = claim_sql();
        let (lock_sql, keyed_sql) = (lock_claim_keys_sql(), claim_keyed_sql());
        let mut claimed: Vec<Run> = Vec::new();
        // Claims are not retried on connection failures: a claim whose commit went
        // unacknowledged leaves runs leased to nobody, and they return when the lease expires.
        for _round in 0..4 {
            let wanted = max.saturating_sub(claimed.len());
            if wanted == 0 {
                break;
            }
            let limit = wanted.min(i64::MAX as usize) as i64;
            let (keyless, keys) = self
                .run("claim", false, |client, _| {
                    let (sql, now_text, expires) = (&first_sql, &now_text, &expires);
                    async move {
                        let statement = client.prepare_cached(sql).await?;
                        let rows = client
                            .query(&statement, &[now_text, &limit, &worker_id, expires])
                            .await?;
                        let mut runs = Vec::new();
                        let mut keys: Vec<String> = Vec::new();
                        for row in &rows {
                            if row.try_get::<_, bool>(0)? {
                                let key: String = row.try_get(2)?;
                                if !keys.contains(&key) {
                                    keys.push(key);
                                }
                            } else {
                                runs.push(run_from_row(row, 3)?);
                            }
                        }
                        Ok((runs, keys))
                    }
                })
                .await?;
            claimed.extend(keyless);
            if keys.is_empty() {
                break;
            }
            let room = max.saturating_sub(claimed.len());
            let keys: Vec<String> = keys.into_iter().take(room).collect();
            if keys.is_empty() {
                break;
            }
            let keys_json = serde_json::to_string(&keys)
                .map_err(|error| Error::storage("claim", error.to_string()))?;
            let leased = self
                .run("claim", false, |client, _| {
                    let (lock_sql, keyed_sql) = (&lock_sql, &keyed_sql);
                    let (now_text, expires, keys_json) = (&now_text, &expires, &keys_json);
                    async move {
                        let lock = client.prepare_cached(lock_sql).await?;
                        let keyed = client.prepare_cached(keyed_sql).await?;
                        let keys_json = Some(keys_json.as_str());
                        let lock_params: [&(dyn ToSql + Sync); 1] = [&keys_json];
                        let keyed_params: [&(dyn ToSql + Sync); 3] =
                            [&worker_id, expires, now_text];
                        // Pipelined, one round trip: the locks, then (a statement of its own,
                        // whose snapshot sees every lease committed under them before) the
                        // leases; a failed statement fails the rest and `COMMIT` rolls back.
                        let (began, locked, leased, committed) = futures::join!(
                            client.batch_execute("BEGIN"),
                            client.query(&lock, &lock_params),
                            client.query(&keyed, &keyed_params),
                            client.batch_execute("COMMIT"),
                        );
                        began?;
                        locked?;
                        let leased = leased?;
                        committed?;
                        leased
                            .iter()
                            .map(|row| run_from_row(row, 0))
                            .collect::<std::result::Result<Vec<_>, _>>()
                    }
                })
                .await?;
            let all_keys_leased = leased.len() == keys.len();
            claimed.extend(leased);
            if all_keys_leased {
                break;
            }
            // Some key was taken by another claimer meanwhile: look again with a fresh view.
        }
        claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(claimed)
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let expires = now + lease;
        let (expires_text, now_text) = (expires.to_string(), now.to_string());
        let sql = format!(
            "UPDATE durably_runs SET lease_expires_at = $3, updated_at = $4 \
             WHERE {FENCED} AND lease_expires_at > $4"
        );
        let changed = self
            .run("renew_lease", true, |client, _| {
                let (sql, expires_text, now_text) = (&sql, &expires_text, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, expires_text, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((changed == 1).then_some(expires))
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let sql = format!(
            "WITH u AS (UPDATE durably_runs r SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $3 \
               WHERE r.{FENCED_R} AND (r.concurrency_key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = r.job_name AND p.concurrency_key = r.concurrency_key)) \
               RETURNING r.id), \
             note AS (SELECT pg_notify($4::text, '{NOTICE_RUNS}') FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)"
        );
        let params: [&(dyn ToSql + Sync); 4] =
            [&fence.run_id, &fence.generation, &now_text, &channel];
        let changed = self
            .read("release_lease", &sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let id = new_id_at(now);
        let output = step
            .output
            .as_ref()
            .map(|o| to_json("persist_step", o))
            .transpose()?;
        let index = i32::try_from(step.index)
            .map_err(|_| Error::Validation(format!("step index {} is too large", step.index)))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batch(
            "persist_step",
            batch::Request::Persist(batch::PersistRequest {
                run_id: fence.run_id.clone(),
                generation: fence.generation,
                step_id: id.clone(),
                name: step.name.clone(),
                index,
                status: step.status.as_str(),
                output,
                error: step.error.clone(),
                started_at: step.started_at.to_string(),
                completed_at: now.to_string(),
                reply,
            }),
        )
        .await?;
        let (fenced, inserted, mine) = answer
            .await
            .map_err(|_| Error::storage("persist_step", "the PostgreSQL write task stopped"))??;
        if !mine && !fenced {
            return Ok(None);
        }
        if !mine && !inserted {
            return Err(Error::Conflict(format!(
                "Step \"{}\" of run {} is already completed",
                step.name, fence.run_id
            )));
        }
        Ok(Some(Step {
            id,
            run_id: fence.run_id.clone(),
            name: step.name,
            index: step.index,
            status: step.status,
            output: step.output.filter(|o| !o.is_null()),
            error: step.error,
            started_at: step.started_at,
            completed_at: Some(now),
        }))
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let progress = progress
            .as_ref()
            .map(|p| to_json("update_progress", p))
            .transpose()?;
        let now_text = now.to_string();
        let sql = format!("UPDATE durably_runs SET progress = $3, updated_at = $4 WHERE {FENCED}");
        let changed = self
            .run("update_progress", true, |client, _| {
                let (sql, progress, now_text) = (&sql, &progress, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, progress, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let id = new_id_at(now);
        let data = log
            .data
            .as_ref()
            .map(|d| to_json("append_log", d))
            .transpose()?;
        let now_text = now.to_string();
        let generation = fence.map(|f| f.generation);
        // Unfenced when `$8` is NULL; a retry recognises its own earlier insert by id.
        let sql = format!(
            "INSERT INTO durably_logs ({LOG_COLUMNS}) \
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text \
             WHERE $8::bigint IS NULL OR EXISTS (SELECT 1 FROM durably_runs \
               WHERE id = $2 AND status = 'leased' AND lease_generation = $8::bigint) \
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING id"
        );
        let inserted = self
            .run("append_log", true, |client, _| {
                let (sql, id, data, now_text, log) = (&sql, &id, &data, &now_text, &log);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[
                                id,
                                &log.run_id,
                                &log.step_name,
                                &log.level.as_str(),
                                &log.message,
                                data,
                                now_text,
                                &generation,
                            ],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((inserted == 1).then(|| Log {
            id,
            run_id: log.run_id,
            step_name: log.step_name,
            level: log.level,
            message: log.message,
            data: log.data.filter(|d| !d.is_null()),
            created_at: now,
        }))
    }

    async fn complete_run(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        self.complete(fence, output, now, drop_steps, None)
            .await
            .map(|(completed, _)| completed)
    }

    async fn complete_run_and_claim(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        drop_steps: bool,
        next: &ClaimRequest,
    ) -> Result<(bool, Vec<Run>)> {
        let claim = (next.max > 0).then(|| (next.clone(), now));
        self.complete(fence, output, now, drop_steps, claim).await
    }

    async fn fail_run(
        &self,
        fence: &Fence,
        error: &str,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        self.finish(
            "fail_run",
            fence,
            "status = 'failed', error = $3",
            "failed",
            Some(error.to_owned()),
            now,
            drop_steps,
        )
        .await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp, drop_steps: bool) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let prefix = format!("{NOTICE_CANCEL}{}:", self.shared.origin);
        let sql = "WITH u AS (UPDATE durably_runs SET status = 'cancelled', lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $2, updated_at = $2 \
               WHERE id = $1 AND status IN ('pending', 'leased') RETURNING id), \
             d AS (DELETE FROM durably_steps WHERE $3::boolean AND run_id IN (SELECT id FROM u)), \
             note AS (SELECT pg_notify($4::text, $5::text || id) FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)";
        let params: [&(dyn ToSql + Sync); 5] = [&id, &now_text, &drop_steps, &channel, &prefix];
        let changed = self
            .read("cancel_run", sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let sql = format!(
            "WITH r AS (DELETE FROM durably_runs WHERE id = $1 AND status IN {TERMINAL} RETURNING id), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("delete_run", true, |client, _| {
                let sql = &sql;
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[&id]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        let cutoff = older_than.to_string();
        let limit = limit.min(i64::MAX as u64) as i64;
        let sql = format!(
            "WITH ids AS (SELECT id FROM durably_runs WHERE status IN {TERMINAL} \
               AND completed_at IS NOT NULL AND completed_at < $1 \
               ORDER BY completed_at ASC, id ASC LIMIT $2::bigint FOR UPDATE SKIP LOCKED), \
             r AS (DELETE FROM durably_runs WHERE id IN (SELECT id FROM ids) RETURNING id), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("purge_runs", true, |client, _| {
                let (sql, cutoff) = (&sql, &cutoff);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[cutoff, &limit]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted.max(0) as u64)
    }

    async fn release_expired_leases(&self, now: Timestamp, drop_steps: bool) -> Result<Vec<Run>> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let returning = RUN_COLUMNS;
        // An expired lease goes back to pending unless its job+key already has a pending run, or
        // an older expired lease of the same job+key goes back instead (the pending-per-key
        // index allows one): those fail.
        let sql = format!(
            "WITH x AS (SELECT id, job_name, concurrency_key, created_at FROM durably_runs \
               WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= $1 \
               FOR UPDATE SKIP LOCKED), \
             blocked AS (SELECT x.id FROM x WHERE x.concurrency_key IS NOT NULL AND ( \
               EXISTS (SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = x.job_name AND p.concurrency_key = x.concurrency_key \
                 AND p.id <> x.id) \
               OR EXISTS (SELECT 1 FROM x y WHERE y.job_name = x.job_name \
                 AND y.concurrency_key = x.concurrency_key \
                 AND (y.created_at, y.id) < (x.created_at, x.id)))), \
             f AS (UPDATE durably_runs SET status = 'failed', error = $2, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $1, updated_at = $1 \
               WHERE id IN (SELECT id FROM blocked) RETURNING {returning}), \
             p AS (UPDATE durably_runs SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $1 \
               WHERE id IN (SELECT id FROM x) AND id NOT IN (SELECT id FROM blocked) \
               RETURNING {returning}), \
             dropped AS (DELETE FROM durably_steps WHERE $4 AND run_id IN (SELECT id FROM f)), \
             note AS (SELECT pg_notify($3::text, '{NOTICE_RUNS}') FROM p LIMIT 1) \
             SELECT {returning} FROM f UNION ALL \
             SELECT {returning} FROM p WHERE (SELECT count(*) FROM note) >= 0"
        );
        self.run("release_expired_leases", true, |client, _| {
            let (sql, now_text, channel) = (&sql, &now_text, &channel);
            async move {
                let statement = client.prepare_cached(sql).await?;
                let rows = client
                    .query(
                        &statement,
                        &[
                            now_text,
                            &LEASE_EXPIRED_PENDING_EXISTS,
                            channel,
                            &drop_steps,
                        ],
                    )
                    .await?;
                rows.iter().map(|row| run_from_row(row, 0)).collect()
            }
        })
        .await
    }

    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let mut sets = vec!["updated_at = $1".to_string()];
        let mut values: Vec<Option<String>> = vec![Some(now.to_string())];
        let mut set = |column: &str, value: Option<String>| {
            values.push(value);
            sets.push(format!("{column} = ${}", values.len()));
        };
        if let Some(status) = patch.status {
            set("status", Some(status.as_str().to_owned()));
        }
        if let Some(owner) = &patch.lease_owner {
            set("lease_owner", owner.clone());
        }
        if let Some(expires) = patch.lease_expires_at {
            set("lease_expires_at", expires.map(|t| t.to_string()));
        }
        if let Some(progress) = &patch.progress {
            let text = progress
                .as_ref()
                .map(|p| to_json("update_run", p))
                .transpose()?;
            set("progress", text);
        }
        if let Some(error) = &patch.error {
            set("error", error.clone());
        }
        if let Some(completed_at) = patch.completed_at {
            set("completed_at", completed_at.map(|t| t.to_string()));
        }
        if let Some(input) = &patch.input {
            set("input", Some(to_json("update_run", input)?));
        }
        values.push(Some(id.to_owned()));
        let sql = format!(
            "UPDATE durably_runs SET {} WHERE id = ${}",
            sets.join(", "),
            values.len()
        );
        let changed = self
            .run("update_run", true, |client, _| {
                let (sql, values) = (&sql, &values);
                async move {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    Ok(client.execute(sql.as_str(), &params).await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }

    fn notifications(&self) -> Option<broadcast::Receiver<StoreNotice>> {
        self.notice_sender().map(|sender| sender.subscribe())
    }
}

impl PostgresStore {
    /// Completes or fails a run (fenced), dropping its steps if asked, and wakes workers when
    /// the run held a concurrency key another pending run waits for. A retry whose first
    /// attempt committed recognises the run in the state it wrote (same generation).
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        operation: &'static str,
        fence: &Fence,
        set: &str,
        status: &'static str,
        value: Option<String>,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let sql = format!(
            "WITH u AS (UPDATE durably_runs SET {set}, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $4, updated_at = $4 \
               WHERE {FENCED} RETURNING id, job_name, concurrency_key), \
             d AS (DELETE FROM durably_steps WHERE $5::boolean AND run_id IN (SELECT id FROM u)), \
             note AS (SELECT pg_notify($6::text, '{NOTICE_RUNS}') FROM u \
               WHERE u.concurrency_key IS NOT NULL AND EXISTS (SELECT 1 FROM durably_runs p \
               WHERE p.status = 'pending' AND p.concurrency_key = u.concurrency_key)), \
             again AS (SELECT 1 FROM durably_runs WHERE $7::boolean AND id = $1 \
               AND status = '{status}' AND lease_generation = $2::bigint) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note), \
               (SELECT count(*) FROM again)"
        );
        let (changed, again) = self
            .run(operation, true, |client, attempt| {
                let (sql, now_text, channel, value) = (&sql, &now_text, &channel, &value);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let retrying = attempt > 0;
                    let row = client
                        .query_one(
                            &statement,
                            &[
                                &fence.run_id,
                                &fence.generation,
                                value,
                                now_text,
                                &drop_steps,
                                channel,
                                &retrying,
                            ],
                        )
                        .await?;
                    Ok((count(&row, 0)?, count(&row, 2)?))
                }
            })
            .await?;
        Ok(changed == 1 || again == 1)
    }
}

/// Applies the steps of `ladder` above the version its table records, recording each (inside
/// the migration's transaction). Reads only when the database is up to date: every worker
/// migrates at start, and `CREATE INDEX IF NOT EXISTS` locks the table even when the index is
/// there.
async fn climb(
    tx: &deadpool_postgres::Transaction<'_>,
    ladder: &Ladder,
) -> std::result::Result<(), Fail> {
    let current = version_in(tx, ladder.table).await?;
    if current >= ladder.latest() {
        return Ok(());
    }
    if let Some(create) = ladder.create_table() {
        tx.batch_execute(&create).await?;
    }
    for migration in ladder.pending(current) {
        for statement in migration.statements {
            tx.batch_execute(statement).await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO \"{}\" (version, applied_at) VALUES ($1::integer, $2) \
                 ON CONFLICT DO NOTHING",
                ladder.table
            ),
            &[&(migration.version as i32), &Timestamp::now().to_string()],
        )
        .await?;
    }
    Ok(())
}

/// The upstream schema version: `MAX(version)` of `durably_schema_versions` in the current
/// schema, or 0 without the table.
async fn current_version<C: deadpool_postgres::GenericClient>(
    client: &C,
) -> std::result::Result<i64, Fail> {
    version_in(client, UPSTREAM.table).await
}

/// `MAX(version)` of a version table in the current schema, or 0 without the table.
async fn version_in<C: deadpool_postgres::GenericClient>(
    client: &C,
    table: &str,
) -> std::result::Result<i64, Fail> {
    let exists = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?;
    if !exists.try_get::<_, bool>(0)? {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0)::bigint FROM \"{table}\""),
            &[],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)?)
}

/// An enqueue request turned into statement parameters (the id is fixed across retries).
struct Prepared {
    id: String,
    job_name: String,
    idempotency_key: Option<String>,
    concurrency_key: Option<String>,
    input: String,
    labels: String,
    now: String,
    label_keys: Vec<String>,
    label_values: Vec<String>,
    labels_valid: bool,
}

impl Prepared {
    fn new(run: &NewRun, id: String, now: Timestamp) -> Result<Self> {
        let labels_valid = run.labels.keys().all(|key| validate_label_key(key).is_ok());
        if !labels_valid && run.idempotency_key.is_none() {
            // Nothing can make the request idempotent: report the bad key now.
            for key in run.labels.keys() {
                validate_label_key(key)?;
            }
        }
        Ok(Prepared {
            id,
            job_name: run.job_name.clone(),
            idempotency_key: run.idempotency_key.clone(),
            concurrency_key: run.concurrency_key.clone(),
            input: to_json("enqueue", &run.input)?,
            labels: to_json("enqueue", &run.labels)?,
            now: now.to_string(),
            label_keys: run.labels.keys().cloned().collect(),
            label_values: run.labels.values().cloned().collect(),
            labels_valid,
        })
    }

    fn sql(&self) -> String {
        if self.labels_valid {
            enqueue_sql()
        } else {
            idempotency_sql()
        }
    }

    fn params<'a>(&'a self, channel: &'a String) -> Vec<&'a (dyn ToSql + Sync)> {
        if !self.labels_valid {
            return vec![&self.job_name, &self.idempotency_key];
        }
        vec![
            &self.job_name,
            &self.idempotency_key,
            &self.concurrency_key,
            &self.id,
            &self.input,
            &self.labels,
            &self.now,
            &self.label_keys,
            &self.label_values,
            channel,
        ]
    }
}

/// Turns the enqueue statement's rows into the outcome (upstream §5.5). `None`: a concurrent
/// insert won a race (retry). `Some(Err)`: the request is rejected (validation or conflict) and
/// a batch must roll back.
fn resolve(
    run: &NewRun,
    prepared: &Prepared,
    rows: &[Row],
) -> std::result::Result<Option<Result<Enqueued>>, Fail> {
    let Some(row) = rows.first() else {
        if !prepared.labels_valid {
            // Not idempotent after all: the bad label key is the answer.
            for key in run.labels.keys() {
                if let Err(error) = validate_label_key(key) {
                    return Ok(Some(Err(error)));
                }
            }
        }
        return Ok(None);
    };
    let kind: i32 = row.try_get(0)?;
    let stored = run_from_row(row, 1)?;
    Ok(Some(match kind {
        0 => Ok(Enqueued {
            run: stored,
            disposition: Disposition::Idempotent,
        }),
        1 => match (&run.coalesce, &run.concurrency_key) {
            (Some(_), _) => Ok(Enqueued {
                run: stored,
                disposition: Disposition::Coalesced,
            }),
            (None, Some(key)) => Err(pending_conflict(&run.job_name, key)),
            (None, None) => Err(conflict_after_retry(run)),
        },
        _ => Ok(Enqueued {
            run: stored,
            disposition: Disposition::Created,
        }),
    }))
}

/// Upstream's message for an enqueue that kept losing races (UPSTREAM §2), naming the key it
/// raced on.
fn conflict_after_retry(run: &NewRun) -> Error {
    let key = match (&run.concurrency_key, &run.idempotency_key) {
        (Some(key), _) => format!("concurrency key \"{key}\""),
        (None, Some(key)) => format!("idempotency key \"{key}\""),
        (None, None) => "its keys".to_owned(),
    };
    Error::Conflict(format!(
        "Conflict after retry for {key} in job \"{}\". Concurrent modification detected.",
        run.job_name
    ))
}

// ---------------------------------------------------------------------------------------------
// LISTEN/NOTIFY

/// Keeps one connection listening on `channel` until `stop` fires, reconnecting with backoff;
/// after every (re)connect it announces `RunsAvailable` (notices may have been missed).
async fn listen_loop(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    origin: String,
    sender: broadcast::Sender<StoreNotice>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        if stop.is_cancelled() {
            return;
        }
        match listen_once(
            &config,
            &tls,
            &channel,
            &origin,
            &sender,
            &stop,
            &mut failures,
        )
        .await
        {
            Ok(true) => return,
            Ok(false) => failures = failures.saturating_add(1),
            Err(error) => {
                failures = failures.saturating_add(1);
                let error = db_error_text(&error);
                tracing::warn!(%error, "PostgreSQL listener disconnected; reconnecting");
                let _ = sender.send(StoreNotice::StorageFault {
                    operation: "listen".to_owned(),
                    error,
                });
            }
        }
        let wait = Duration::from_millis((50u64 << failures.min(6)).min(2_000));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One listening session: `Ok(true)` when stopped, `Ok(false)` or `Err` when the connection
/// ended.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    channel: &str,
    origin: &str,
    sender: &broadcast::Sender<StoreNotice>,
    stop: &CancellationToken,
    failures: &mut u32,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (forward, mut payloads) = tokio::sync::mpsc::unbounded_channel::<
        std::result::Result<String, tokio_postgres::Error>,
    >();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    let _ = forward.send(Ok(notification.payload().to_owned()));
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = forward.send(Err(error));
                    return;
                }
            }
        }
    });
    let outcome = async {
        client
            .batch_execute(&format!("LISTEN {}", ident(channel)))
            .await?;
        *failures = 0;
        let _ = sender.send(StoreNotice::RunsAvailable);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(true),
                payload = payloads.recv() => match payload {
                    Some(Ok(payload)) => {
                        let notice = match payload.strip_prefix(NOTICE_CANCEL) {
                            Some(rest) => match rest.split_once(':') {
                                Some((from, _)) if from == origin => None,
                                Some((_, run_id)) => Some(StoreNotice::RunCancelled {
                                    run_id: run_id.to_owned(),
                                }),
                                None => Some(StoreNotice::RunsAvailable),
                            },
                            None => Some(StoreNotice::RunsAvailable),
                        };
                        if let Some(notice) = notice {
                            let _ = sender.send(notice);
                        }
                    }
                    Some(Err(error)) => return Err(error),
                    None => {
                        // The connection ended without an error message: probe it to get one.
                        client.simple_query("SELECT 1").await?;
                        return Ok(false);
                    }
                },
            }
        }
    }
    .await;
    driver.abort();
    outcome
}

/// Test support: a store in a schema of its own, and a plain client on that schema.
#[cfg(all(test, durably_postgres_tests))]
pub(super) mod test_schema {
    use super::{PostgresOptions, PostgresStore};
    use crate::store::Store;
    use tokio_postgres::NoTls;

    /// A migrated store in a fresh schema, a client whose `search_path` is that schema, and
    /// the schema's name (drop it with [`drop`]).
    pub(in crate::store::postgres) async fn fresh()
    -> (PostgresStore, tokio_postgres::Client, String) {
        let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("test database URL");
        let schema = format!("durably_test_{}", crate::new_id().to_lowercase());
        let store = PostgresStore::connect_with(
            &url,
            PostgresOptions {
                schema: Some(schema.clone()),
                ..PostgresOptions::default()
            },
        )
        .expect("connect");
        store.migrate().await.expect("migrate");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .expect("search path");
        (store, client, schema)
    }

    pub(in crate::store::postgres) async fn drop(client: &tokio_postgres::Client, schema: &str) {
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .expect("drop schema");
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn conflict_after_retry_names_the_key_as_upstream_does() {
        let run = |concurrency: Option<&str>, idempotency: Option<&str>| NewRun {
            job_name: "sync".into(),
            input: Value::Null,
            idempotency_key: idempotency.map(str::to_owned),
            concurrency_key: concurrency.map(str::to_owned),
            labels: Default::default(),
            coalesce: None,
        };
        let message = |run| conflict_after_retry(&run).to_string();
        assert!(
            message(run(Some("user-1"), Some("once"))).ends_with(
                "Conflict after retry for concurrency key \"user-1\" in job \"sync\". \
                 Concurrent modification detected."
            ),
            "{}",
            message(run(Some("user-1"), None))
        );
        assert!(
            message(run(None, Some("once")))
                .contains("for idempotency key \"once\" in job \"sync\"")
        );
    }
}

#[cfg(all(test, durably_postgres_tests))]
mod tests {
    use super::*;

    /// A batch of plain runs is one statement; when it runs again after its commit (a retry
    /// whose first answer was lost), it adds nothing and still reports every run.
    #[tokio::test]
    async fn a_plain_batch_retried_after_its_commit_adds_nothing() {
        let (store, client, schema) = test_schema::fresh().await;
        let now = Timestamp::now();
        let runs: Vec<NewRun> = (0..3)
            .map(|n| NewRun {
                job_name: "job".into(),
                input: serde_json::json!({ "n": n }),
                idempotency_key: None,
                concurrency_key: None,
                labels: [("team".to_string(), format!("t{n}"))]
                    .into_iter()
                    .collect(),
                coalesce: None,
            })
            .collect();
        let prepared: Vec<Prepared> = runs
            .iter()
            .map(|run| Prepared::new(run, new_id_at(now), now).expect("prepare"))
            .collect();
        let first = store
            .enqueue_plain(&runs, &prepared, now)
            .await
            .expect("enqueue");
        let again = store
            .enqueue_plain(&runs, &prepared, now)
            .await
            .expect("retry");
        let count = |sql: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(sql, &[]).await.expect("count");
                row.get::<_, i64>(0)
            }
        };
        let stored_runs = count("SELECT count(*) FROM durably_runs").await;
        let stored_labels = count("SELECT count(*) FROM durably_run_labels").await;
        let stored = store.get_run(&first[1].run.id).await.expect("get");
        test_schema::drop(&client, &schema).await;

        assert_eq!((stored_runs, stored_labels), (3, 3));
        assert_eq!(first, again);
        assert!(first.iter().all(|e| e.disposition == Disposition::Created));
        assert_eq!(stored.as_ref(), Some(&first[1].run));
    }

    /// A page of the run list reads a few index entries per status, whatever the size of the
    /// table: no sequential scan, and no plan node handles more rows than the page needs from
    /// one status (a sort of every matching run would read them all).
    #[tokio::test]
    async fn a_page_of_runs_reads_only_the_newest_of_each_status() {
        let (store, client, schema) = test_schema::fresh().await;
        client
            .batch_execute(
                "INSERT INTO durably_runs (id, job_name, input, status, created_at, updated_at) \
                 SELECT 'c' || lpad(g::text, 8, '0'), 'job', '{}', \
                   CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END, \
                   to_char(timestamp '2026-01-01' + g * interval '10 ms', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '2026-01-01T00:00:00.000Z' \
                 FROM generate_series(1, 20000) g; \
                 INSERT INTO durably_runs (id, job_name, input, status, created_at, updated_at) \
                 SELECT 'p' || lpad(g::text, 8, '0'), 'job', '{}', 'pending', \
                   '2026-02-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z' \
                 FROM generate_series(1, 5000) g; \
                 ANALYZE durably_runs",
            )
            .await
            .expect("fill");

        let filters = [
            RunFilter {
                limit: Some(50),
                ..RunFilter::default()
            },
            RunFilter {
                statuses: vec![RunStatus::Pending, RunStatus::Leased],
                limit: Some(20),
                offset: Some(10),
                ..RunFilter::default()
            },
            RunFilter {
                statuses: vec![RunStatus::Completed],
                job_names: vec!["job".into()],
                limit: Some(50),
                ..RunFilter::default()
            },
        ];
        let mut plans = Vec::new();
        for filter in &filters {
            let values = RunsValues::new(filter);
            let (sql, params) = runs_query(filter, &values);
            let rows = client
                .query(
                    &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"),
                    &params,
                )
                .await
                .expect("explain");
            let plan: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            plans.push(plan.join("\n"));
        }
        let newest = store.get_runs(&filters[0]).await.expect("list");
        test_schema::drop(&client, &schema).await;

        assert_eq!(newest.len(), 50);
        assert!(newest.iter().all(|run| run.status == RunStatus::Pending));
        for plan in &plans {
            assert!(!plan.contains("Seq Scan"), "{plan}");
            let most = plan
                .split("actual rows=")
                .skip(1)
                .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            assert!(most <= 200, "a node handled {most} rows:\n{plan}");
        }
    }
}
