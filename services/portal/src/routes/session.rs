//! Signing up, in and out (pages and JSON), and `GET /api/v1/me`.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::Duration;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tailor_core::{
    Error, OrgId,
    accounts::{Email, Password, orgs, parse_name, sessions, users},
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

#[post("/signin")]
#[tracing::instrument(skip_all)]
async fn api_sign_in(
    state: web::Data<AppState>,
    body: web::Json<SignIn>,
) -> Result<HttpResponse, Error> {
    let SignIn { email, password } = body.into_inner();
    let user = users::authenticate(&state.pool, &email, password).await?;
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
    match users::authenticate(&state.pool, &email, password).await {
        Ok(user) => {
            let org = users::default_org(&state.pool, user.id).await?;
            let (_, jwt) = start_session(&state, user.id, org).await?;
            Ok(with_cookie(
                redirect("/dashboard"),
                session_cookie(jwt, state.jwt.ttl_minutes),
            )?)
        }
        Err(e @ Error::Unauthorized) => {
            let mut context = Context::new();
            context.insert("email", &email);
            form_error(&mut context, &e);
            let mut response = anonymous_page(&state, &req, lang, "signin.html", context)?;
            *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
            Ok(response)
        }
        Err(e) => Err(e.into()),
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
