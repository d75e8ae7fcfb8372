//! Browser-facing defences that every response shares, as one middleware
//! ([`guard`]):
//!
//! - **Security headers** on every page, API answer, asset and error: a Content Security
//!   Policy without `unsafe-inline` (the pages load their scripts from `/static` and keep
//!   data in `<script type="application/json">` blocks, which never run), no framing
//!   (`frame-ancestors 'none'` and `X-Frame-Options: DENY`), `nosniff`, no referrer (an
//!   invitation link carries its token in the path), and `no-store` unless the handler
//!   chose its own caching (static assets do).
//! - **Cross-site refusal**: a cookie-authenticated request that changes state and that
//!   the browser marks as coming from another site (`Sec-Fetch-Site: cross-site` or
//!   `same-site`, or an `Origin` that is not this server's) is refused with 403 before any
//!   handler runs. This is a second wall behind the per-session CSRF token that
//!   `crate::auth` checks; requests with an `Authorization` header (personal API tokens)
//!   are exempt, since browsers never attach one on their own.

use actix_web::{
    HttpResponse, ResponseError,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        Method,
        header::{self, HeaderName, HeaderValue},
    },
    middleware::Next,
};
use tailor_core::Error;

use crate::routes::PageError;

/// The policy of every portal response. `style-src 'self'` also forbids `style="…"`
/// attributes: pages set computed widths from scripts (`element.style`), which CSP allows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Headers set on every response unless the handler set them itself.
pub const HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the
    // cross-site check must refuse. `same-origin` still keeps invitation tokens in URLs
    // from leaking to other sites.
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
    ("cache-control", "no-store"),
];

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a request that changes state looks cross-site, or `None` when it does not.
///
/// Browsers send `Sec-Fetch-Site` (all current ones) and `Origin` (on every POST) and a
/// page cannot forge either. Clients that send neither (scripts, old browsers) fall back
/// on the CSRF token alone.
pub fn cross_site_reason(req: &ServiceRequest) -> Option<&'static str> {
    if !changes_state(req.method()) || req.headers().contains_key(header::AUTHORIZATION) {
        return None;
    }
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        match site.to_str().unwrap_or("") {
            "same-origin" | "none" => {}
            _ => return Some("sec-fetch-site"),
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // `Origin` is `scheme://host[:port]`; the request's own authority is its `Host`.
        let host = req.connection_info().host().to_ascii_lowercase();
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.to_ascii_lowercase());
        if authority.as_deref() != Some(host.as_str()) {
            return Some("origin");
        }
    }
    None
}

/// The middleware: refuses cross-site state changes, then sets [`HEADERS`].
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut response = match cross_site_reason(&req) {
        Some(reason) => {
            tracing::warn!(
                reason,
                method = %req.method(),
                path = req.path(),
                "refused a cross-site request"
            );
            let e = Error::forbidden(
                "This request came from another site; open Tailor itself and try again.",
            );
            let answer: HttpResponse = if req.path().starts_with("/api/") {
                e.error_response()
            } else {
                PageError(e).error_response()
            };
            req.into_response(answer)
        }
        None => next.call(req).await?.map_into_boxed_body(),
    };
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    Ok(response)
}
