//! Routes, one file per resource. Handlers parse input, call `tailor_core`, and answer.

pub mod api_keys;
pub mod assets;
pub mod blueprints;
pub mod datasets;
pub mod health;
pub mod invitations;
pub mod jobs;
pub mod members;
pub mod models;
pub mod orgs;
pub mod session;
pub mod tokens;

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use tailor_core::{Error, accounts::orgs as core_orgs, accounts::users};
use tera::Context;

use crate::{auth::CurrentMember, i18n::Lang, state::AppState};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(health::configure)
        .configure(assets::configure)
        .service(
            web::scope("/api/v1")
                .configure(session::configure_api)
                .configure(orgs::configure_api)
                .configure(members::configure_api)
                .configure(invitations::configure_api)
                .configure(tokens::configure_api)
                .configure(datasets::configure_api)
                .configure(blueprints::configure_api)
                .configure(jobs::configure_api)
                .configure(models::configure_api)
                .configure(api_keys::configure_api)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(Error::NotFound)
                })),
        )
        .configure(session::configure_pages)
        .configure(orgs::configure_pages)
        .configure(members::configure_pages)
        .configure(invitations::configure_pages)
        .configure(datasets::configure_pages)
        .configure(blueprints::configure_pages)
        .configure(jobs::configure_pages)
        .configure(models::configure_pages)
        .configure(api_keys::configure_pages);
}

/// Malformed JSON bodies answer with our error shape, naming the problem generically.
pub fn json_error(err: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            Error::PayloadTooLarge.into()
        }
        JsonPayloadError::ContentType => {
            Error::validation("content-type", "Send the body as application/json.").into()
        }
        other => {
            let message = match &other {
                JsonPayloadError::Deserialize(e) => format!("The JSON body does not fit: {e}."),
                _ => "The JSON body could not be read.".into(),
            };
            Error::validation("body", message).into()
        }
    }
}

/// The error of an HTML page: not signed in → to the sign-in page; otherwise a small page.
#[derive(Debug)]
pub struct PageError(pub Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError(e.into())
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self.0 {
            Error::Unauthorized => StatusCode::SEE_OTHER,
            _ => self.0.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Error::Unauthorized = self.0 {
            return redirect("/signin");
        }
        if let Error::Unexpected(e) = &self.0 {
            tracing::error!(error = format!("{e:#}"), "unexpected error on a page");
        }
        // Rendered without the request's language: a short bilingual page.
        let message = html_escape(&self.0.public_message());
        HttpResponse::build(self.status_code())
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>Tailor</title>\
                 <link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main class=\"card narrow\">\
                 <h1>{}</h1><p>{message}</p><p><a href=\"/dashboard\">Tailor</a></p></main></body></html>",
                self.status_code().as_u16()
            ))
    }
}

pub type PageResult = Result<HttpResponse, PageError>;

pub fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .finish()
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// What every signed-in page shows: who, which organization, the switcher, the token.
pub async fn member_context(state: &AppState, member: &CurrentMember) -> Result<Context, Error> {
    let user = users::find(&state.pool, member.user_id)
        .await?
        .ok_or(Error::Unauthorized)?;
    let memberships = core_orgs::memberships(&state.pool, member.user_id).await?;
    let current = memberships
        .iter()
        .find(|m| m.org_id == member.org_id)
        .cloned()
        .ok_or(Error::NotFound)?;
    let mut context = Context::new();
    context.insert("user", &user);
    context.insert("memberships", &memberships);
    context.insert("current", &current);
    context.insert("role", member.role.as_str());
    context.insert("can_manage", &member.role.can_manage_members());
    context.insert("csrf_token", member.user.csrf_token().unwrap_or(""));
    Ok(context)
}

/// Renders `name` for `lang`, as a page.
pub fn page(state: &AppState, lang: Lang, name: &str, context: &Context) -> PageResult {
    Ok(state.templates.page(lang, name, context)?)
}

pub fn with_cookie(
    mut response: HttpResponse,
    cookie: actix_web::cookie::Cookie<'static>,
) -> Result<HttpResponse, Error> {
    response
        .add_cookie(&cookie)
        .map_err(|e| Error::Unexpected(anyhow::anyhow!("setting a cookie: {e}")))?;
    Ok(response)
}
