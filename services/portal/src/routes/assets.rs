//! Static assets (compiled in) and the language switch.

use actix_web::{HttpResponse, cookie::Cookie, get, http::header, web};
use serde::Deserialize;

use crate::i18n::{LANG_COOKIE, Lang};

/// The pages' scripts and styles, compiled in: (file name, content type, bytes).
const STATIC: &[(&str, &str, &str)] = &[
    (
        "app.css",
        CSS,
        include_str!("../../../../templates/static/app.css"),
    ),
    (
        "datasets.css",
        CSS,
        include_str!("../../../../templates/static/datasets.css"),
    ),
    (
        "datasets.js",
        JS,
        include_str!("../../../../templates/static/datasets.js"),
    ),
    (
        "blueprints.css",
        CSS,
        include_str!("../../../../templates/static/blueprints.css"),
    ),
    (
        "blueprints.js",
        JS,
        include_str!("../../../../templates/static/blueprints.js"),
    ),
    (
        "jobs.css",
        CSS,
        include_str!("../../../../templates/static/jobs.css"),
    ),
    (
        "jobs.js",
        JS,
        include_str!("../../../../templates/static/jobs.js"),
    ),
    (
        "models.css",
        CSS,
        include_str!("../../../../templates/static/models.css"),
    ),
    (
        "models.js",
        JS,
        include_str!("../../../../templates/static/models.js"),
    ),
    (
        "api_keys.css",
        CSS,
        include_str!("../../../../templates/static/api_keys.css"),
    ),
    (
        "api_keys.js",
        JS,
        include_str!("../../../../templates/static/api_keys.js"),
    ),
];
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "application/javascript; charset=utf-8";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(static_file).service(switch_language);
}

#[get("/static/{file}")]
async fn static_file(file: web::Path<String>) -> HttpResponse {
    match STATIC.iter().find(|(name, _, _)| *name == file.as_str()) {
        Some((_, content_type, body)) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, *content_type))
            .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
            .body(*body),
        None => HttpResponse::NotFound().finish(),
    }
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// Sets the language cookie and goes back. Only local paths are followed (no open redirect).
#[get("/lang/{code}")]
#[tracing::instrument(skip(query))]
async fn switch_language(code: web::Path<String>, query: web::Query<Next>) -> HttpResponse {
    let next = query
        .next
        .as_deref()
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/dashboard")
        .to_owned();
    let mut response = HttpResponse::SeeOther();
    response.insert_header((header::LOCATION, next));
    if let Some(lang) = Lang::parse(&code) {
        response.cookie(
            Cookie::build(LANG_COOKIE, lang.code())
                .path("/")
                .same_site(actix_web::cookie::SameSite::Lax)
                .max_age(actix_web::cookie::time::Duration::days(365))
                .finish(),
        );
    }
    response.finish()
}
