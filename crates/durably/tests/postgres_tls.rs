//! TLS of the PostgreSQL backend: the URL's `sslmode`, certificate verification, extra root
//! certificates and the development opt-out.
//!
//! The tests that need no database (option errors, a fake server without TLS) always run. The
//! others need `DURABLY_TEST_POSTGRES_URL` (see `build.rs`; without it they are reported as
//! ignored) and a server with `ssl = on`: on a server with TLS off they print `SKIPPED: …` and
//! return. Which store connection uses TLS is read from `pg_stat_ssl`, through a separate
//! observer connection, by the `application_name` each test gives its store.
//!
//! The trust test runs in a child process (this test binary again, `tls_trust_child`) whose
//! system trust store is emptied through `SSL_CERT_FILE`/`SSL_CERT_DIR`: Debian links its
//! self-signed "snakeoil" server certificate into `/etc/ssl/certs`, so the machine's own store
//! may already trust the local server.
mod common;

use durably::store::ClaimRequest;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PgSchema, fresh_schema, postgres_url};
use durably::{
    Durably, Error, Job, PostgresOptions, PostgresStore, StepContext, Store, Timestamp,
    TriggerOptions, WaitOptions, store::NewRun,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// Environment of the `tls_trust_child` process: the host name to connect by and the PEM file
/// of the server's certificate.
const ENV_CHILD_HOST: &str = "DURABLY_TLS_CHILD_HOST";
const ENV_CHILD_CA: &str = "DURABLY_TLS_CHILD_CA";

/// A certificate failure must not be retried like a dropped connection: it fails well within
/// the default `retry_for` (20 s).
const FAILS_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers

fn test_config() -> tokio_postgres::Config {
    postgres_url().parse().expect("DURABLY_TEST_POSTGRES_URL")
}

/// The test URL with `params` added (later parameters override the URL's own).
fn url_with(params: &[(&str, &str)]) -> String {
    let mut url = postgres_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        for (key, value) in params {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{key}={value}"));
        }
    } else {
        for (key, value) in params {
            url.push_str(&format!(" {key}={}", quote(value)));
        }
    }
    url
}

/// A key-value connection string for the test database at `host`, with `params`.
fn conninfo_at(host: &str, params: &[(&str, &str)]) -> String {
    let config = test_config();
    let mut parts = vec![
        format!("host={}", quote(host)),
        format!(
            "port={}",
            config.get_ports().first().copied().unwrap_or(5432)
        ),
    ];
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(dbname) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(dbname)));
    }
    for (key, value) in params {
        parts.push(format!("{key}={}", quote(value)));
    }
    parts.join(" ")
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The test server's host name or address, `None` for a Unix socket.
fn test_host() -> Option<String> {
    match test_config().get_hosts().first()? {
        Host::Tcp(host) => Some(host.clone()),
        _ => None,
    }
}

fn is_local(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A plain connection to the test database, to look at the store's sessions from outside.
async fn observer() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls)
        .await
        .expect("observer connection");
    tokio::spawn(connection);
    client
}

/// `true` when the test server has TLS on; otherwise prints why the test is skipped.
async fn server_has_tls(observer: &tokio_postgres::Client, test: &str) -> bool {
    let row = observer.query_one("SHOW ssl", &[]).await.expect("SHOW ssl");
    let on = row.get::<_, String>(0) == "on";
    if !on {
        println!("SKIPPED {test}: the test server has ssl = off, so there is no TLS to test");
    }
    on
}

/// A session of the store named `application_name`, as the server sees it.
#[derive(Debug)]
struct Session {
    ssl: bool,
    version: Option<String>,
    query: String,
}

async fn sessions(observer: &tokio_postgres::Client, application_name: &str) -> Vec<Session> {
    observer
        .query(
            "SELECT coalesce(s.ssl, false), s.version, left(coalesce(a.query, ''), 40) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|row| Session {
            ssl: row.get(0),
            version: row.get(1),
            query: row.get(2),
        })
        .collect()
}

fn application_name() -> String {
    format!("durably_tls_{}", durably::new_id().to_lowercase())
}

fn probe_run() -> NewRun {
    NewRun {
        job_name: "tls-probe".into(),
        input: serde_json::json!({}),
        idempotency_key: None,
        concurrency_key: None,
        labels: Default::default(),
        coalesce: None,
        ..Default::default()
    }
}

/// Runs `store.migrate()`, which must fail, and returns its error message; panics if it
/// succeeds or takes longer than [`FAILS_WITHIN`].
async fn migrate_fails(store: &PostgresStore) -> String {
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), store.migrate())
        .await
        .expect("a TLS failure must not hang");
    let elapsed = started.elapsed();
    let error = outcome.expect_err("the connection must be refused");
    assert!(
        matches!(error, Error::Storage { .. }),
        "a storage error: {error:?}"
    );
    assert!(
        elapsed < FAILS_WITHIN,
        "failed after {elapsed:?}: a TLS failure must not be retried (`{error}`)"
    );
    println!("failed after {elapsed:?} as expected: {error}");
    error.to_string()
}

// ---------------------------------------------------------------------------------------------
// Without a database

fn options_with_roots(path: &Path) -> PostgresOptions {
    PostgresOptions::default().root_certificates(Some(path.to_owned()))
}

#[test]
fn a_missing_root_certificate_file_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-such-ca.pem");
    let error = PostgresStore::connect_with(
        "postgres://postgres@127.0.0.1:5432/app?sslmode=require",
        options_with_roots(&path),
    )
    .expect_err("a missing file is refused at once");
    let message = error.to_string();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("cannot read"), "{message}");
}

#[test]
fn a_root_certificate_file_without_a_valid_certificate_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("empty.pem", "", "no PEM certificate"),
        ("key.pem", "just some text\n", "no PEM certificate"),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
            "invalid PEM",
        ),
        (
            "not-x509.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            "not a valid X.509 certificate",
        ),
    ];
    for (name, contents, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        // Read whatever the sslmode: a wrong file is found before the first connection.
        let error = PostgresStore::connect_with(
            "postgres://postgres@127.0.0.1:5432/app",
            options_with_roots(&path),
        )
        .expect_err("an unusable file is refused at once");
        let message = error.to_string();
        assert!(matches!(error, Error::Config(_)), "{name}: {error:?}");
        assert!(
            message.contains(&path.display().to_string()) && message.contains(why),
            "{name}: {message}"
        );
    }
}

#[test]
fn the_options_default_to_verified_certificates_and_no_extra_roots() {
    let options = PostgresOptions::default();
    assert_eq!(options.root_certificates, None::<PathBuf>);
    assert!(!options.danger_accept_invalid_certificates);
}

/// A fake server that answers the TLS request with `N` (no TLS) and reports whether the client
/// then went on with a plain startup message.
async fn server_without_tls() -> (u16, tokio::sync::mpsc::UnboundedReceiver<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_err() {
                    return;
                }
                // SSLRequest: length 8, code 80877103.
                assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
                socket.write_all(b"N").await.expect("answer");
                let mut startup = [0u8; 8];
                let plain =
                    socket.read_exact(&mut startup).await.is_ok() && startup[4..] == [0, 3, 0, 0]; // protocol 3.0
                let _ = report.send(plain);
            });
        }
    });
    (port, reports)
}

#[tokio::test]
async fn require_fails_at_once_on_a_server_without_tls_and_prefer_goes_plain() {
    let (port, mut reports) = server_without_tls().await;

    let url = format!("postgres://postgres@127.0.0.1:{port}/app?sslmode=require");
    let store = PostgresStore::connect_with(&url, PostgresOptions::default()).expect("connect");
    let message = migrate_fails(&store).await;
    assert!(message.contains("server does not support TLS"), "{message}");
    assert_eq!(reports.recv().await, Some(false), "no plain startup");

    let url = format!("postgres://postgres@127.0.0.1:{port}/app?sslmode=prefer");
    let store =
        PostgresStore::connect_with(&url, PostgresOptions::default().retry_for(Duration::ZERO))
            .expect("connect");
    let _ = store.migrate().await; // the fake server says no more
    assert_eq!(
        reports.recv().await,
        Some(true),
        "prefer starts a plain session when the server has no TLS"
    );
}

// ---------------------------------------------------------------------------------------------
// With the test database

/// `sslmode=require` without verification: every connection of the store (the pool's, the
/// lease holders' batch pool's and the listener's) is encrypted, and the store works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn require_without_verification_encrypts_every_connection() {
    let observer = observer().await;
    if !server_has_tls(
        &observer,
        "require_without_verification_encrypts_every_connection",
    )
    .await
    {
        return;
    }
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let app = application_name();
    let store = PostgresStore::connect_with(
        &url_with(&[("sslmode", "require"), ("application_name", &app)]),
        PostgresOptions::default()
            .schema(Some(schema.clone()))
            .max_connections(4)
            .danger_accept_invalid_certificates(true),
    )
    .expect("connect");
    store.migrate().await.expect("migrate over TLS");

    let enqueued = store
        .enqueue(probe_run(), Timestamp::now())
        .await
        .expect("enqueue over TLS");
    let claimed = store
        .claim(
            &ClaimRequest::new("tls-worker", Duration::from_secs(60), 1),
            Timestamp::now(),
        )
        .await
        .expect("claim over TLS");
    assert_eq!(
        claimed.iter().map(|run| &run.id).collect::<Vec<_>>(),
        [&enqueued.run.id]
    );

    // A worker on the same store: its step writes go through the batch pool, and it listens.
    let durably = Durably::builder()
        .store(store.clone())
        .build()
        .expect("build");
    let handle = durably
        .register(Job::new(
            "tls-steps",
            |step: StepContext, input: u64| async move {
                let doubled = step.run("double", |_| async move { Ok(input * 2) }).await?;
                Ok(doubled)
            },
        ))
        .expect("register");
    durably.init().await.expect("init");
    let result = handle
        .trigger_and_wait(
            21,
            TriggerOptions::default(),
            WaitOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .expect("a run over TLS");
    assert_eq!(result.output, Some(42));

    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = sessions(&observer, &app).await;
        let listening = seen.iter().any(|s| s.query.starts_with("LISTEN"));
        if (listening && seen.len() >= 3) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    durably.stop().await;
    println!("the store's sessions: {seen:#?}");
    assert!(
        seen.iter().any(|s| s.query.starts_with("LISTEN")),
        "the listener's session: {seen:#?}"
    );
    assert!(seen.len() >= 3, "pool, batch pool and listener: {seen:#?}");
    assert!(
        seen.iter().all(|s| s.ssl && s.version.is_some()),
        "every session uses TLS: {seen:#?}"
    );
}

/// `sslmode=prefer` (the default) with default options: TLS when the server offers it, and a
/// self-signed certificate is no obstacle (as in libpq, `prefer` does not verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn prefer_encrypts_when_the_server_offers_tls() {
    let observer = observer().await;
    if !server_has_tls(&observer, "prefer_encrypts_when_the_server_offers_tls").await {
        return;
    }
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let app = application_name();
    let store = PostgresStore::connect_with(
        &url_with(&[("sslmode", "prefer"), ("application_name", &app)]),
        PostgresOptions::default().schema(Some(schema.clone())),
    )
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
        .enqueue(probe_run(), Timestamp::now())
        .await
        .expect("enqueue");
    let seen = sessions(&observer, &app).await;
    println!("the store's sessions: {seen:#?}");
    assert!(!seen.is_empty() && seen.iter().all(|s| s.ssl), "{seen:#?}");
}

/// `sslmode=require` verifies by default: connecting by the server's IP address, which the
/// server's certificate does not name (a self-signed certificate names a host), fails at once
/// with an error that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn require_verifies_the_certificate_by_default() {
    let observer = observer().await;
    if !server_has_tls(&observer, "require_verifies_the_certificate_by_default").await {
        return;
    }
    let Some(host) = test_host() else {
        println!("SKIPPED require_verifies_the_certificate_by_default: no TCP host in the URL");
        return;
    };
    let host = if is_local(&host) {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    let store = PostgresStore::connect_with(
        &conninfo_at(&host, &[("sslmode", "require")]),
        PostgresOptions::default(),
    )
    .expect("connect");
    let started = Instant::now();
    if tokio::time::timeout(Duration::from_secs(30), store.schema_version())
        .await
        .expect("no hang")
        .is_ok()
    {
        println!(
            "SKIPPED require_verifies_the_certificate_by_default: this machine trusts the \
             server's certificate for {host} (took {:?})",
            started.elapsed()
        );
        return;
    }
    let message = migrate_fails(&store).await;
    assert!(
        message.contains("error performing TLS handshake"),
        "{message}"
    );
    assert!(message.contains("certificate"), "{message}");
    assert!(
        message.contains("PostgresOptions::") || message.contains("does not name the URL's host"),
        "a hint: {message}"
    );
}

/// `sslmode=disable` stays plain, whatever the server offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn disable_stays_plain() {
    let observer = observer().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let app = application_name();
    let store = PostgresStore::connect_with(
        &url_with(&[("sslmode", "disable"), ("application_name", &app)]),
        PostgresOptions::default().schema(Some(schema.clone())),
    )
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
        .enqueue(probe_run(), Timestamp::now())
        .await
        .expect("enqueue");
    let seen = sessions(&observer, &app).await;
    println!("the store's sessions: {seen:#?}");
    assert!(!seen.is_empty() && seen.iter().all(|s| !s.ssl), "{seen:#?}");
}

/// The server's certificate given in `root_certificates` is trusted, with verification on: by
/// a host name the certificate lists, in a process whose system trust store is empty. Without
/// it, the same connection is refused as untrusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn require_trusts_the_root_certificates_given() {
    const TEST: &str = "require_trusts_the_root_certificates_given";
    let observer = observer().await;
    if !server_has_tls(&observer, TEST).await {
        return;
    }
    if !test_host().is_some_and(|host| is_local(&host)) {
        println!("SKIPPED {TEST}: the test server is not on this machine (its certificate file)");
        return;
    }
    let show = |name: &'static str| {
        let observer = &observer;
        async move {
            let row = observer
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect("SHOW");
            row.get::<_, String>(0)
        }
    };
    let mut certificate = PathBuf::from(show("ssl_cert_file").await);
    if certificate.is_relative() {
        certificate = PathBuf::from(show("data_directory").await).join(certificate);
    }
    let Ok(pem) = std::fs::read(&certificate) else {
        println!(
            "SKIPPED {TEST}: cannot read the server's certificate {}",
            certificate.display()
        );
        return;
    };
    let port = test_config().get_ports().first().copied().unwrap_or(5432);
    let mut host = None;
    for name in certificate_dns_names(&pem) {
        let local = tokio::net::lookup_host((name.as_str(), port))
            .await
            .is_ok_and(|mut addresses| addresses.any(|address| address.ip().is_loopback()));
        if local {
            host = Some(name);
            break;
        }
    }
    let Some(host) = host else {
        println!(
            "SKIPPED {TEST}: none of the names of {} resolves to this machine ({:?})",
            certificate.display(),
            certificate_dns_names(&pem)
        );
        return;
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "tls_trust_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", dir.path())
        .env(ENV_CHILD_HOST, &host)
        .env(ENV_CHILD_CA, &certificate)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout"))
        .stderr(std::fs::File::create(&err).expect("stderr"))
        .spawn()
        .expect("spawn the child");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    println!(
        "child (host {host}, CA {}):\n{output}",
        certificate.display()
    );
    let status = status.expect("the child finished within 120 s");
    assert!(status.success(), "the child failed: {status}");
    assert!(output.contains("tls_trust_child: passed"), "{output}");
}

/// The DNS names of the first certificate in `pem` (its subject alternative names).
fn certificate_dns_names(pem: &[u8]) -> Vec<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem).next() else {
        return Vec::new();
    };
    let Ok(certificate) = x509_cert::Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some((_, names))) = certificate.tbs_certificate.get::<SubjectAltName>() else {
        return Vec::new();
    };
    names
        .0
        .iter()
        .filter_map(|name| match name {
            GeneralName::DnsName(name) => Some(name.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

/// The child of [`require_trusts_the_root_certificates_given`]: its system trust store is empty.
#[test]
#[ignore = "child-process entry point of require_trusts_the_root_certificates_given"]
fn tls_trust_child() {
    let (Ok(host), Ok(ca)) = (std::env::var(ENV_CHILD_HOST), std::env::var(ENV_CHILD_CA)) else {
        println!(
            "tls_trust_child runs only as a child of require_trusts_the_root_certificates_given"
        );
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        // Without the server's certificate: not trusted, refused at once.
        let store = PostgresStore::connect_with(
            &conninfo_at(&host, &[("sslmode", "require")]),
            PostgresOptions::default(),
        )
        .expect("connect");
        let message = migrate_fails(&store).await;
        assert!(message.contains("certificate"), "{message}");
        assert!(
            message.contains("PostgresOptions::root_certificates"),
            "the hint names the option: {message}"
        );

        // With it: verified, encrypted, working.
        let schema = fresh_schema();
        let _guard = PgSchema {
            name: schema.clone(),
        };
        let app = application_name();
        let store = PostgresStore::connect_with(
            &conninfo_at(&host, &[("sslmode", "require"), ("application_name", &app)]),
            PostgresOptions::default()
                .schema(Some(schema.clone()))
                .root_certificates(Some(PathBuf::from(&ca))),
        )
        .expect("connect");
        store
            .migrate()
            .await
            .expect("migrate with a verified certificate");
        let enqueued = store
            .enqueue(probe_run(), Timestamp::now())
            .await
            .expect("enqueue");
        let claimed = store
            .claim(
                &ClaimRequest::new("tls-worker", Duration::from_secs(60), 1),
                Timestamp::now(),
            )
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, enqueued.run.id);
        let seen = sessions(&observer().await, &app).await;
        println!("the store's sessions: {seen:#?}");
        assert!(!seen.is_empty() && seen.iter().all(|s| s.ssl), "{seen:#?}");
    });
    println!("tls_trust_child: passed");
}
