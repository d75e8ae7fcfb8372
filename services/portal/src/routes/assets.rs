//! Static assets (compiled in) and the language switch.

use actix_web::{HttpResponse, cookie::Cookie, get, http::header, web};
use serde::Deserialize;

use crate::i18n::{LANG_COOKIE, Lang};

const APP_CSS: &str = include_str!("../../../../templates/static/app.css");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(app_css).service(switch_language);
}

#[get("/static/app.css")]
async fn app_css() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/css; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(APP_CSS)
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
