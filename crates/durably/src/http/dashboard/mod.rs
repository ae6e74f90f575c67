//! The web dashboard: one hand-written page (HTML, CSS, vanilla JavaScript) embedded in the
//! binary, talking to the routes of [`router`](super::router).

use axum::Router;
use axum::extract::OriginalUri;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const CSS: &str = include_str!("dashboard.css");
const JS: &str = include_str!("dashboard.js");
const BULK_JS: &str = include_str!("bulk.js");

/// The web dashboard as an axum router: the page at `/` and its assets (`/dashboard.css`,
/// `/dashboard.js`, `/bulk.js`), all embedded in the binary — no build step, no external fonts or CDNs.
///
/// `api_base` is the absolute path where [`router`](super::router) is nested (for example
/// `/api/durably`); the page calls it from the browser. Merge the dashboard at the root or nest
/// it under any path of its own:
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use durably::http::{HttpOptions, dashboard, router};
/// let durably = durably::Durably::builder().sqlite("app.db").build()?;
/// durably.init().await?;
/// let app = axum::Router::new()
///     .nest("/admin/durably", dashboard("/api/durably"))
///     .nest("/api/durably", router(durably.clone(), HttpOptions::new()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
///
/// The page shows the runs (live over `GET /runs/subscribe`, filtered by status, job, labels,
/// run-id prefix and creation time; the filters live in the page URL; bulk cancel, retrigger
/// and delete of a selection or of every run matching), a run's input, output, steps and logs (live over
/// `GET /subscribe`), cancel / resume (a failed run) / retrigger / delete buttons, and a trigger form built from the
/// JSON Schema of each job's input (`GET /jobs`, see [`Job::input_schema`](crate::Job::input_schema)).
/// It applies no authentication of its own: requests carry the browser's cookies, so the
/// router's [`Auth`](super::Auth) hooks decide.
pub fn dashboard(api_base: &str) -> Router {
    let api_base = api_base.trim_end_matches('/').to_owned();
    Router::new()
        .route(
            "/",
            get(move |uri: OriginalUri| {
                let api_base = api_base.clone();
                async move { index(&uri, &api_base) }
            }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/bulk.js",
            get(|| async { asset(BULK_JS, "text/javascript; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The page, with the API base and the dashboard's own path (for its assets) filled in.
fn index(uri: &OriginalUri, api_base: &str) -> Response {
    let path = uri.path();
    let assets = if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    };
    let page = INDEX
        .replace("{{API_BASE}}", &escape_html(api_base))
        .replace("{{ASSETS}}", &escape_html(&assets));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        page,
    )
        .into_response()
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::escape_html;

    #[test]
    fn escapes_attribute_text() {
        assert_eq!(escape_html("/a\"<b>&'"), "/a&quot;&lt;b&gt;&amp;&#39;");
    }
}
