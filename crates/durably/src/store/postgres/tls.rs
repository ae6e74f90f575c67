//! TLS for `sslmode=prefer|require` with rustls: root certificates, libpq-compatible `prefer`,
//! and which certificate errors are permanent.

use super::*;

/// The TLS settings of a store's connections, for the `sslmode` of `config` (see
/// [`PostgresStore::connect_with`]). Reads [`PostgresOptions::root_certificates`] whatever the
/// mode, so a wrong path fails here rather than on the first `require` connection.
pub(super) fn tls_connector(
    config: &tokio_postgres::Config,
    options: &PostgresOptions,
) -> Result<MakeRustlsConnect> {
    // An explicit provider: no dependence on (or conflict with) a process-wide default.
    // rustls 0.23.48 deprecates ring's provider (no post-quantum key exchange); the alternative,
    // aws-lc-rs, needs cmake to build (see the workspace's Cargo.toml). Allowed, so that a
    // dependent's build prints no warning.
    #[allow(deprecated)]
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
pub(super) fn read_root_certificates(path: &Path) -> Result<rustls::RootCertStore> {
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
pub(super) struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

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
pub(super) fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    std::error::Error::source(error)?
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

/// A TLS failure that retrying cannot fix: the handshake failed on the certificate or the
/// protocol (not on the socket), or the server has no TLS under `sslmode=require`.
pub(super) fn tls_error_is_permanent(error: &tokio_postgres::Error) -> bool {
    if rustls_error(error).is_some() {
        return true;
    }
    // tokio-postgres' own negotiation errors ("server does not support TLS", "no hostname
    // provided for TLS handshake") carry no I/O error; a socket failure mid-handshake does.
    error.to_string() == "error performing TLS handshake"
        && std::error::Error::source(error).is_some_and(|source| !source.is::<std::io::Error>())
}

/// What to do about a failed certificate, for the error message.
pub(super) fn tls_hint(error: &tokio_postgres::Error) -> Option<&'static str> {
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
