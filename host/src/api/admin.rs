//! The admin page (`/admin`, on with `REALTIME_ENABLE_ADMIN`): one HTML page, its script and
//! its style sheet, embedded in the binary (no CDN, no build step). The page holds no data of
//! its own: it signs in with `REALTIME_API_KEY` (kept in the browser's session storage) and
//! calls the server API.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::App;

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/app.js");
const STYLE: &str = include_str!("admin/app.css");

/// The page may load its own script, style and API answers, nothing else, and may not be
/// framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/admin`, `/admin/app.js`, `/admin/app.css`.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/admin",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/",
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin/app.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
