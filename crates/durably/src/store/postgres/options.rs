//! [`PostgresOptions`]: pool size, schema, retries, TLS roots and the batches' tuning.

use super::*;

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
    /// Keep a run's step rows (and their outputs) after it ends (upstream's `preserveSteps`,
    /// default `false`: a run that completes, fails or is cancelled drops them in the same
    /// transaction). `Durably::builder().preserve_steps(true)` sets it for the stores the
    /// builder opens.
    pub preserve_steps: bool,
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
            preserve_steps: false,
        }
    }
}
