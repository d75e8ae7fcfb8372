//! Organizations: the dashboard, creating one, and switching the current one.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use tailor_core::{
    Error, OrgId,
    accounts::{orgs, parse_name, sessions},
};
use uuid::Uuid;

use super::{PageResult, member_context, page, redirect};
use crate::{
    auth::{CsrfForm, CurrentMember, CurrentUser},
    i18n::Lang,
    state::AppState,
};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_list)
        .service(api_create)
        .service(api_switch);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(home)
        .service(dashboard)
        .service(create_form)
        .service(switch_form);
}

#[derive(Deserialize)]
struct NewOrg {
    name: String,
}

#[derive(Deserialize)]
struct Switch {
    org_id: Uuid,
}

/// Makes `org` the session's current organization; `NotFound` unless the user belongs to it.
async fn switch(
    state: &AppState,
    user: &CurrentUser,
    org: OrgId,
) -> Result<orgs::Membership, Error> {
    let session = user.session().ok_or_else(|| {
        Error::validation(
            "authorization",
            "API tokens choose the organization with the X-Tailor-Org header.",
        )
    })?;
    orgs::membership(&state.pool, org, user.user_id)
        .await?
        .ok_or(Error::NotFound)?;
    sessions::switch_org(&state.pool, session.id, org).await?;
    orgs::memberships(&state.pool, user.user_id)
        .await?
        .into_iter()
        .find(|m| m.org_id == org)
        .ok_or(Error::NotFound)
}

#[get("/orgs")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_list(state: web::Data<AppState>, user: CurrentUser) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(orgs::memberships(&state.pool, user.user_id).await?))
}

#[post("/orgs")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_create(
    state: web::Data<AppState>,
    user: CurrentUser,
    body: web::Json<NewOrg>,
) -> Result<HttpResponse, Error> {
    let name = parse_name("name", &body.name)?;
    let org = orgs::create(&state.pool, &name, user.user_id).await?;
    Ok(HttpResponse::Created().json(org))
}

#[post("/orgs/{org_id}/switch")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_switch(
    state: web::Data<AppState>,
    user: CurrentUser,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let membership = switch(&state, &user, OrgId(path.into_inner())).await?;
    Ok(HttpResponse::Ok().json(membership))
}

// ---- pages ----

#[get("/")]
async fn home(req: HttpRequest) -> HttpResponse {
    let signed_in = req.cookie(crate::auth::SESSION_COOKIE).is_some();
    redirect(if signed_in { "/dashboard" } else { "/signin" })
}

#[get("/dashboard")]
#[tracing::instrument(skip_all, fields(user_id = %member.user_id, org_id = %member.org_id))]
async fn dashboard(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let context = member_context(&state, &member).await?;
    page(&state, lang, "dashboard.html", &context)
}

#[post("/orgs")]
#[tracing::instrument(skip_all)]
async fn create_form(state: web::Data<AppState>, form: CsrfForm<NewOrg>) -> PageResult {
    let name = parse_name("name", &form.form.name)?;
    let org = orgs::create(&state.pool, &name, form.user.user_id).await?;
    switch(&state, &form.user, org.id).await?;
    Ok(redirect("/dashboard"))
}

#[post("/orgs/switch")]
#[tracing::instrument(skip_all)]
async fn switch_form(state: web::Data<AppState>, form: CsrfForm<Switch>) -> PageResult {
    switch(&state, &form.user, OrgId(form.form.org_id)).await?;
    Ok(redirect("/dashboard"))
}
