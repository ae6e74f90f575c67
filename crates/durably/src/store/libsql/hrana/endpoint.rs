//! Where a client sends its pipelines: `libsql://`, `https://` and `http://` URLs.

use super::*;

/// Where a client sends its pipelines: scheme, host, port and path prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub(super) tls: bool,
    /// The host name or IP address (an IPv6 address without brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// The path before `/v2/pipeline` or `/v3/pipeline`: empty or `/a/b` (no trailing slash).
    prefix: String,
}

impl Endpoint {
    /// Parses a libSQL URL: `libsql://` (HTTPS unless `tls=0`), `https://` or `http://`, with
    /// optional port and path prefix, and the query parameters `authToken` and `tls` of
    /// libsql-client. Returns the endpoint and the URL's auth token, if any.
    pub fn parse(url: &str) -> Result<(Endpoint, Option<String>), HranaError> {
        let invalid = |reason: &str| HranaError::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected libsql://, https:// or http://"))?;
        let mut tls = match scheme.to_ascii_lowercase().as_str() {
            "libsql" | "https" => true,
            "http" => false,
            "ws" | "wss" => {
                return Err(invalid(
                    "Hrana over WebSocket is not supported: use libsql://, https:// or http://",
                ));
            }
            _ => return Err(invalid("expected libsql://, https:// or http://")),
        };
        let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
        if !fragment.is_empty() {
            return Err(invalid("a URL fragment (#…) has no meaning here"));
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported: pass the auth token separately",
            ));
        }
        let mut token = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "authToken" => token = Some(value.to_owned()).filter(|t| !t.is_empty()),
                "tls" if scheme.eq_ignore_ascii_case("libsql") => match value {
                    "0" => tls = false,
                    "1" => tls = true,
                    _ => return Err(invalid("tls= must be 0 or 1")),
                },
                "tls" => return Err(invalid("tls= is only meaningful with libsql://")),
                _ => return Err(invalid(&format!("unknown query parameter {key:?}"))),
            }
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed [ in the IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("expected :port after the IPv6 address"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(&format!("bad port {p:?}")))?,
            None if tls => 443,
            None => 80,
        };
        let prefix = path.trim_end_matches('/').to_owned();
        Ok((
            Endpoint {
                tls,
                host: host.to_owned(),
                port,
                prefix,
            },
            token,
        ))
    }

    /// Whether requests go over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The host, as a `Host` header and a URL write it.
    pub(super) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The path of `version`'s pipeline endpoint.
    pub(super) fn pipeline_path(&self, version: HranaVersion) -> String {
        format!("{}{}", self.prefix, version.pipeline_path())
    }

    /// The path before the version (`""` or `/a/b`).
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl fmt::Display for Endpoint {
    /// The base URL, `https://host[:port][/prefix]` (never a token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

/// `url` without the value of an `authToken` parameter, for error messages.
pub(super) fn redact(url: &str) -> String {
    match url.find("authToken=") {
        Some(i) => {
            let start = i + "authToken=".len();
            let end = url[start..].find('&').map_or(url.len(), |j| start + j);
            format!("{}***{}", &url[..start], &url[end..])
        }
        None => url.to_owned(),
    }
}
