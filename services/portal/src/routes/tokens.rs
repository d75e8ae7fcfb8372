//! Personal API tokens: create (shown once), list, revoke.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::Deserialize;
use tailor_core::{
    Error,
    accounts::{parse_name, tokens},
};
use uuid::Uuid;

use crate::{auth::CurrentUser, state::AppState};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_list)
        .service(api_create)
        .service(api_revoke);
}

#[derive(Deserialize)]
struct NewToken {
    name: String,
}

#[get("/tokens")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_list(state: web::Data<AppState>, user: CurrentUser) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(tokens::list(&state.pool, user.user_id).await?))
}

#[post("/tokens")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_create(
    state: web::Data<AppState>,
    user: CurrentUser,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, Error> {
    let name = parse_name("name", &body.name)?;
    let (record, token) = tokens::create(&state.pool, user.user_id, &name).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "api_token": record, "token": token })))
}

#[delete("/tokens/{id}")]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn api_revoke(
    state: web::Data<AppState>,
    user: CurrentUser,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    tokens::revoke(&state.pool, user.user_id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
