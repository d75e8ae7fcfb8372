//! Members of the current organization: list, look up, change role, remove.

use actix_web::{HttpResponse, delete, get, patch, web};
use serde::Deserialize;
use tailor_core::{
    Error,
    accounts::{Role, invitations, orgs},
    error::OrNotFound,
};
use uuid::Uuid;

use super::{PageResult, member_context, page};
use crate::{auth::CurrentMember, i18n::Lang, state::AppState};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_list)
        .service(api_get)
        .service(api_change_role)
        .service(api_remove);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(members_page);
}

#[derive(Deserialize)]
struct ChangeRole {
    role: String,
}

#[get("/members")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(orgs::members(&state.pool, member.org_id).await?))
}

#[get("/members/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let found = orgs::find_member(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    Ok(HttpResponse::Ok().json(found))
}

#[patch("/members/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_change_role(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
    body: web::Json<ChangeRole>,
) -> Result<HttpResponse, Error> {
    let target = path.into_inner();
    // Look up first, so that another organization's id is a 404 whatever the role.
    orgs::find_member(&state.pool, member.org_id, target)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    let role = Role::parse("role", &body.role)?;
    let changed = orgs::change_role(&state.pool, member.org_id, member.role, target, role).await?;
    Ok(HttpResponse::Ok().json(changed))
}

#[delete("/members/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_remove(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let target = path.into_inner();
    orgs::find_member(&state.pool, member.org_id, target)
        .await?
        .or_not_found()?;
    // Anyone may leave; removing others takes an admin.
    if target != member.member_id {
        member.require_admin()?;
    }
    orgs::remove_member(&state.pool, member.org_id, member.role, target).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- pages ----

#[get("/members")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn members_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let mut context = member_context(&state, &member).await?;
    context.insert("members", &orgs::members(&state.pool, member.org_id).await?);
    if member.role.can_manage_members() {
        let open: Vec<_> = invitations::list(&state.pool, member.org_id)
            .await?
            .into_iter()
            .filter(invitations::Invitation::is_open)
            .collect();
        context.insert("invitations", &open);
    }
    page(&state, lang, "members.html", &context)
}
