//! Invitations by link: create and revoke (admins), open and accept (anyone signed in).

use actix_web::{HttpResponse, delete, get, post, web};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use tailor_core::{
    Error,
    accounts::{Email, Role, invitations, orgs, sessions},
    error::OrNotFound,
};
use tera::Context;
use uuid::Uuid;

use super::{PageResult, member_context, page, redirect};
use crate::{
    auth::{CsrfForm, CurrentMember, CurrentUser},
    i18n::Lang,
    state::AppState,
};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    // `accept` before `{id}` so that the literal path wins.
    cfg.service(api_accept)
        .service(api_list)
        .service(api_create)
        .service(api_get)
        .service(api_revoke);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(create_form)
        .service(open_page)
        .service(accept_form);
}

#[derive(Deserialize)]
struct NewInvitation {
    email: String,
    role: String,
}

#[derive(Deserialize)]
struct Accept {
    token: String,
}

#[derive(Serialize)]
struct Created {
    invitation: invitations::Invitation,
    /// Shown once: the link is the only way to accept.
    token: String,
    url: String,
}

async fn create(
    state: &AppState,
    member: &CurrentMember,
    input: NewInvitation,
) -> Result<Created, Error> {
    member.require_admin()?;
    let email = Email::parse(&input.email)?;
    let role = Role::parse("role", &input.role)?;
    let ttl = Duration::hours(state.settings.auth.invitation_ttl_hours);
    let (invitation, token) = invitations::create(
        &state.pool,
        member.org_id,
        member.user_id,
        &email,
        role,
        ttl,
    )
    .await?;
    let url = format!(
        "{}/invitations/{token}",
        state.settings.application.base_url.trim_end_matches('/')
    );
    Ok(Created {
        invitation,
        token,
        url,
    })
}

/// Joins the organization and makes it the session's current one.
async fn accept(
    state: &AppState,
    user: &CurrentUser,
    token: &str,
) -> Result<orgs::Membership, Error> {
    let membership = invitations::accept(&state.pool, token, user.user_id).await?;
    if let Some(session) = user.session() {
        sessions::switch_org(&state.pool, session.id, membership.org_id).await?;
    }
    Ok(membership)
}

#[get("/invitations")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    member.require_admin()?;
    Ok(HttpResponse::Ok().json(invitations::list(&state.pool, member.org_id).await?))
}

#[post("/invitations")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<NewInvitation>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Created().json(create(&state, &member, body.into_inner()).await?))
}

#[get("/invitations/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let invitation = invitations::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    member.require_admin()?;
    Ok(HttpResponse::Ok().json(invitation))
}

#[delete("/invitations/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_revoke(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    invitations::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    invitations::revoke(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[post("/invitations/accept")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_accept(
    state: web::Data<AppState>,
    user: CurrentUser,
    body: web::Json<Accept>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(accept(&state, &user, body.token.trim()).await?))
}

// ---- pages ----

#[post("/invitations")]
#[tracing::instrument(skip_all)]
async fn create_form(
    state: web::Data<AppState>,
    lang: Lang,
    req: actix_web::HttpRequest,
    form: CsrfForm<NewInvitation>,
) -> PageResult {
    let CsrfForm { user, form } = form;
    let member = CurrentMember::resolve(&state, &req, user).await?;
    let created = create(&state, &member, form).await?;
    let mut context = member_context(&state, &member).await?;
    context.insert("created", &created);
    context.insert("members", &orgs::members(&state.pool, member.org_id).await?);
    let open: Vec<_> = invitations::list(&state.pool, member.org_id)
        .await?
        .into_iter()
        .filter(invitations::Invitation::is_open)
        .collect();
    context.insert("invitations", &open);
    page(&state, lang, "members.html", &context)
}

#[get("/invitations/{token}")]
#[tracing::instrument(skip_all)]
async fn open_page(
    state: web::Data<AppState>,
    lang: Lang,
    user: CurrentUser,
    path: web::Path<String>,
) -> PageResult {
    let token = path.into_inner();
    let (invitation, org_name) = invitations::find_open_by_token(&state.pool, &token)
        .await?
        .or_not_found()?;
    let mut context = Context::new();
    context.insert("org_name", &org_name);
    context.insert("role", invitation.role.as_str());
    context.insert("token", &token);
    context.insert("csrf_token", user.csrf_token().unwrap_or(""));
    page(&state, lang, "invitation.html", &context)
}

#[derive(Deserialize)]
struct Empty {}

#[post("/invitations/{token}/accept")]
#[tracing::instrument(skip_all)]
async fn accept_form(
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: CsrfForm<Empty>,
) -> PageResult {
    accept(&state, &form.user, &path.into_inner()).await?;
    Ok(redirect("/dashboard"))
}
