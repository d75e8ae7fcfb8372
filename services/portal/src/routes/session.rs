//! Signing up, in and out (pages and JSON), and `GET /api/v1/me`.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::Duration;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tailor_core::{
    Error, OrgId,
    accounts::{
        Email, Password, orgs, parse_name, sessions,
        throttle::{self, SignInError},
        users,
    },
    auth::{random_secret, secrets_match},
};
use tera::Context;
use uuid::Uuid;

use super::{PageResult, page, redirect, with_cookie};
use crate::{
    auth::{
        CsrfForm, CurrentMember, CurrentUser, PRE_SESSION_CSRF_COOKIE, expired_session_cookie,
        pre_session_csrf_cookie, session_cookie,
    },
    i18n::Lang,
    state::AppState,
};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_sign_up)
        .service(api_sign_in)
        .service(api_sign_out)
        .service(api_me);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(sign_up_page)
        .service(sign_up_form)
        .service(sign_in_page)
        .service(sign_in_form)
        .service(sign_out_form);
}

/// Opens a server-side session and signs its JWT.
async fn start_session(
    state: &AppState,
    user: Uuid,
    org: Option<OrgId>,
) -> Result<(sessions::Session, String), Error> {
    let ttl = Duration::minutes(state.jwt.ttl_minutes);
    let session = sessions::create(&state.pool, user, org, ttl).await?;
    let jwt = state.jwt.issue(user, session.id, session.expires_at)?;
    Ok((session, jwt))
}

#[derive(Deserialize)]
pub struct SignUp {
    email: String,
    password: SecretString,
    #[serde(default)]
    display_name: String,
}

#[derive(Deserialize)]
pub struct SignIn {
    email: String,
    password: SecretString,
}

#[derive(Serialize)]
struct SessionStarted {
    user: users::User,
    current_org_id: Option<OrgId>,
    /// Echo it as `X-CSRF-Token` on cookie-authenticated calls that change state.
    csrf_token: String,
}

fn parse_sign_up(input: SignUp) -> Result<users::NewUser, Error> {
    let email = Email::parse(&input.email)?;
    let display_name = if input.display_name.trim().is_empty() {
        email.as_str().split('@').next().unwrap_or("").to_owned()
    } else {
        parse_name("display_name", &input.display_name)?
    };
    Ok(users::NewUser {
        email,
        display_name,
        password: Password::parse(input.password)?,
    })
}

#[post("/signup")]
#[tracing::instrument(skip_all)]
async fn api_sign_up(
    state: web::Data<AppState>,
    body: web::Json<SignUp>,
) -> Result<HttpResponse, Error> {
    let new = parse_sign_up(body.into_inner())?;
    let (user, org) = users::sign_up(&state.pool, new).await?;
    let (session, jwt) = start_session(&state, user.id, Some(org.id)).await?;
    Ok(HttpResponse::Created()
        .cookie(session_cookie(jwt, state.jwt.ttl_minutes))
        .json(SessionStarted {
            user,
            current_org_id: session.current_org_id,
            csrf_token: session.csrf_token,
        }))
}

/// The client address that sign-in throttling counts: the TCP peer. (Behind a reverse
/// proxy every client shares the proxy's address; see docs/security.md.)
fn client_address(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Whole seconds to wait, rounded up, for `Retry-After`.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The 429 of the JSON API for a throttled sign-in.
fn throttled_response(wait: std::time::Duration, limit: &str) -> HttpResponse {
    let seconds = retry_after_seconds(wait);
    let whom = if limit == "account" {
        "this account"
    } else {
        "your address"
    };
    HttpResponse::TooManyRequests()
        .insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()))
        .json(serde_json::json!({ "error": {
            "code": "too_many_requests",
            "message": format!(
                "Too many failed sign-ins for {whom}; try again in {} minute(s).",
                seconds.div_ceil(60)
            ),
            "retry_after_seconds": seconds,
        } }))
}

#[post("/signin")]
#[tracing::instrument(skip_all)]
async fn api_sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SignIn>,
) -> Result<HttpResponse, Error> {
    let SignIn { email, password } = body.into_inner();
    let signed_in = throttle::sign_in(
        &state.pool,
        throttle::LIMITS,
        &email,
        password,
        &client_address(&req),
    )
    .await;
    let user = match signed_in {
        Ok(user) => user,
        Err(SignInError::Throttled { retry_after, limit }) => {
            return Ok(throttled_response(retry_after, limit));
        }
        Err(SignInError::Refused(e)) => return Err(e),
    };
    let org = users::default_org(&state.pool, user.id).await?;
    let (session, jwt) = start_session(&state, user.id, org).await?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(jwt, state.jwt.ttl_minutes))
        .json(SessionStarted {
            user,
            current_org_id: session.current_org_id,
            csrf_token: session.csrf_token,
        }))
}

#[post("/signout")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_sign_out(
    state: web::Data<AppState>,
    user: CurrentUser,
) -> Result<HttpResponse, Error> {
    let session = user.session().ok_or_else(|| {
        Error::validation(
            "authorization",
            "API tokens have no session; revoke the token instead.",
        )
    })?;
    sessions::revoke(&state.pool, session.id).await?;
    Ok(HttpResponse::NoContent()
        .cookie(expired_session_cookie())
        .finish())
}

#[get("/me")]
#[tracing::instrument(skip_all, fields(user_id = %member.user_id, org_id = %member.org_id))]
async fn api_me(state: web::Data<AppState>, member: CurrentMember) -> Result<HttpResponse, Error> {
    let user = users::find(&state.pool, member.user_id)
        .await?
        .ok_or(Error::Unauthorized)?;
    let memberships = orgs::memberships(&state.pool, member.user_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "user": user,
        "current_org_id": member.org_id,
        "role": member.role,
        "orgs": memberships,
        "csrf_token": member.user.csrf_token(),
    })))
}

// ---- pages ----

/// The form's double-submit token: reuse the browser's cookie, or mint one.
fn form_token(req: &HttpRequest) -> (String, bool) {
    match req.cookie(PRE_SESSION_CSRF_COOKIE) {
        Some(c) if !c.value().is_empty() => (c.value().to_owned(), false),
        _ => (random_secret(32), true),
    }
}

fn anonymous_page(
    state: &AppState,
    req: &HttpRequest,
    lang: Lang,
    name: &str,
    mut context: Context,
) -> PageResult {
    let (token, fresh) = form_token(req);
    context.insert("csrf_token", &token);
    let mut response = page(state, lang, name, &context)?;
    if fresh {
        response = with_cookie(response, pre_session_csrf_cookie(token))?;
    }
    Ok(response)
}

fn check_form_token(req: &HttpRequest, sent: &str) -> Result<(), Error> {
    match req.cookie(PRE_SESSION_CSRF_COOKIE) {
        Some(c) if !sent.is_empty() && secrets_match(c.value(), sent) => Ok(()),
        _ => Err(Error::forbidden(
            "The form expired; reload the page and try again.",
        )),
    }
}

#[derive(Deserialize)]
struct SignUpForm {
    #[serde(default)]
    csrf_token: String,
    email: String,
    password: SecretString,
    #[serde(default)]
    display_name: String,
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf_token: String,
    email: String,
    password: SecretString,
}

/// Message key and field for a form error, shown above the form.
fn form_error(context: &mut Context, e: &Error) {
    let key = match e {
        Error::Conflict { .. } => "error.email_taken",
        Error::Unauthorized => "error.wrong_credentials",
        Error::Validation { field, .. } if field == "email" => "error.invalid_email",
        Error::Validation { field, .. } if field == "password" => "error.short_password",
        Error::Validation { .. } => "error.invalid_input",
        _ => "error.unexpected",
    };
    context.insert("error_key", key);
}

#[get("/signup")]
async fn sign_up_page(state: web::Data<AppState>, req: HttpRequest, lang: Lang) -> PageResult {
    anonymous_page(&state, &req, lang, "signup.html", Context::new())
}

#[post("/signup")]
#[tracing::instrument(skip_all)]
async fn sign_up_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    lang: Lang,
    form: web::Form<SignUpForm>,
) -> PageResult {
    let form = form.into_inner();
    check_form_token(&req, &form.csrf_token)?;
    let email = form.email.clone();
    let attempt = async {
        let new = parse_sign_up(SignUp {
            email: form.email,
            password: form.password,
            display_name: form.display_name,
        })?;
        let (user, org) = users::sign_up(&state.pool, new).await?;
        start_session(&state, user.id, Some(org.id)).await
    };
    match attempt.await {
        Ok((_, jwt)) => Ok(with_cookie(
            redirect("/dashboard"),
            session_cookie(jwt, state.jwt.ttl_minutes),
        )?),
        Err(e @ (Error::Validation { .. } | Error::Conflict { .. })) => {
            let mut context = Context::new();
            context.insert("email", &email);
            form_error(&mut context, &e);
            let mut response = anonymous_page(&state, &req, lang, "signup.html", context)?;
            *response.status_mut() = actix_web::ResponseError::status_code(&e);
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

#[get("/signin")]
async fn sign_in_page(state: web::Data<AppState>, req: HttpRequest, lang: Lang) -> PageResult {
    anonymous_page(&state, &req, lang, "signin.html", Context::new())
}

#[post("/signin")]
#[tracing::instrument(skip_all)]
async fn sign_in_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    lang: Lang,
    form: web::Form<SignInForm>,
) -> PageResult {
    let SignInForm {
        csrf_token,
        email,
        password,
    } = form.into_inner();
    check_form_token(&req, &csrf_token)?;
    let signed_in = throttle::sign_in(
        &state.pool,
        throttle::LIMITS,
        &email,
        password,
        &client_address(&req),
    )
    .await;
    match signed_in {
        Ok(user) => {
            let org = users::default_org(&state.pool, user.id).await?;
            let (_, jwt) = start_session(&state, user.id, org).await?;
            Ok(with_cookie(
                redirect("/dashboard"),
                session_cookie(jwt, state.jwt.ttl_minutes),
            )?)
        }
        Err(SignInError::Refused(e @ Error::Unauthorized)) => {
            let mut context = Context::new();
            context.insert("email", &email);
            form_error(&mut context, &e);
            let mut response = anonymous_page(&state, &req, lang, "signin.html", context)?;
            *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
            Ok(response)
        }
        Err(SignInError::Throttled { retry_after, .. }) => {
            let mut context = Context::new();
            context.insert("email", &email);
            context.insert("error_key", "error.too_many_sign_ins");
            let mut response = anonymous_page(&state, &req, lang, "signin.html", context)?;
            *response.status_mut() = actix_web::http::StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(retry_after_seconds(retry_after)),
            );
            Ok(response)
        }
        Err(SignInError::Refused(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct Empty {}

#[post("/signout")]
#[tracing::instrument(skip_all)]
async fn sign_out_form(state: web::Data<AppState>, form: CsrfForm<Empty>) -> PageResult {
    if let Some(session) = form.user.session() {
        sessions::revoke(&state.pool, session.id).await?;
    }
    Ok(with_cookie(redirect("/signin"), expired_session_cookie())?)
}
