//! [`PostgresOptions`]: pool size, schema, retries, TLS roots and the batches' tuning.

use super::*;

/// Options for [`PostgresStore::connect_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// default `false`: a run that completes or is cancelled drops them in the same
    /// transaction; a failed run keeps them whatever this says, for `Durably::resume`, until it
    /// is resumed, deleted or purged). `Durably::builder().preserve_steps(true)` sets it for the stores the
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

/// Setters, one per option (the struct is `#[non_exhaustive]`: build it from
/// `PostgresOptions::default()`).
impl PostgresOptions {
    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`schema`](Self::schema).
    pub fn schema(mut self, schema: Option<String>) -> Self {
        self.schema = schema;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`wait_timeout`](Self::wait_timeout).
    pub fn wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Sets [`retry_for`](Self::retry_for).
    pub fn retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// Sets [`group_commit`](Self::group_commit).
    pub fn group_commit(mut self, group_commit: bool) -> Self {
        self.group_commit = group_commit;
        self
    }

    /// Sets [`synchronous_commit`](Self::synchronous_commit).
    pub fn synchronous_commit(mut self, synchronous_commit: bool) -> Self {
        self.synchronous_commit = synchronous_commit;
        self
    }

    /// Sets [`commit_delay`](Self::commit_delay).
    pub fn commit_delay(mut self, commit_delay: Duration) -> Self {
        self.commit_delay = commit_delay;
        self
    }

    /// Sets [`root_certificates`](Self::root_certificates).
    pub fn root_certificates(mut self, root_certificates: Option<PathBuf>) -> Self {
        self.root_certificates = root_certificates;
        self
    }

    /// Sets [`danger_accept_invalid_certificates`](Self::danger_accept_invalid_certificates).
    pub fn danger_accept_invalid_certificates(
        mut self,
        danger_accept_invalid_certificates: bool,
    ) -> Self {
        self.danger_accept_invalid_certificates = danger_accept_invalid_certificates;
        self
    }

    /// Sets [`preserve_steps`](Self::preserve_steps).
    pub fn preserve_steps(mut self, preserve_steps: bool) -> Self {
        self.preserve_steps = preserve_steps;
        self
    }
}
