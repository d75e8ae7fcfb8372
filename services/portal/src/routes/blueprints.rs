//! Blueprints: the module catalog, live validation, saving (JSON API), and the pages that
//! list them and assemble one without code.
//!
//! - `GET /api/v1/catalog`: every module and blueprint-level setting with its defaults and
//!   bounds, and the ready-made starting points; the assembly page renders from this alone.
//! - `POST /api/v1/blueprints/validate` `{spec, dataset_version_id?}`: 200 with every
//!   problem (`errors`, each naming its field), the normalised blueprint and its YAML, and
//!   when there is no problem the compiled blueprint and the estimate. A `spec` may be an
//!   object or JSON/YAML text; only text that cannot be read at all answers 422.
//! - `GET/POST /api/v1/blueprints`, `GET/PUT/DELETE /api/v1/blueprints/{id}`: saving needs
//!   a blueprint that compiles (catalog and, with `dataset_version_id`, the dataset's
//!   columns); whether the data supports training is checked again when a job starts.
//!
//! Authentication as everywhere: a bearer token, or the session cookie with the
//! `X-CSRF-Token` header (the page's fetches send it, as `datasets.js` does).

use actix_web::{HttpRequest, HttpResponse, delete, get, http::header, post, put, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tailor_core::{
    Error,
    blueprints::{self, BlueprintName, NewBlueprint, SavedBlueprint},
    error::OrNotFound,
};
use tailor_modules::catalog::Catalog;
use uuid::Uuid;

use super::{PageResult, member_context, page, redirect};
use crate::{
    assembly::{self, Assessment},
    auth::{CsrfForm, CurrentMember},
    i18n::Lang,
    state::AppState,
};

/// The strings `blueprints.js` shows, each `blueprints.ui.{key}` in the catalogs.
const UI_KEYS: &[&str] = &[
    "as_input",
    "as_output",
    "auto",
    "checking",
    "choose_column",
    "decoder",
    "encoder",
    "estimate_detail",
    "estimate_none",
    "estimate_summary",
    "file_failed",
    "fusion",
    "hours",
    "json_invalid",
    "method_lora",
    "method_none",
    "minutes",
    "missing_column",
    "modality",
    "no_dataset_columns",
    "not_used",
    "param_dropout",
    "param_folder",
    "param_hidden",
    "param_max_tokens",
    "param_pooling",
    "problems",
    "reason_checking",
    "reason_errors",
    "reason_no_dataset",
    "reason_unsaved",
    "reason_viewer",
    "request_failed",
    "save_failed",
    "saved",
    "saving",
    "seconds",
    "task",
    "task_classification",
    "task_multi_label",
    "task_regression",
    "task_tagging",
    "type_category",
    "type_file",
    "type_multi_label",
    "type_number",
    "type_text",
    "unsaved",
    "use_as",
    "valid",
];

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_catalog)
        .service(api_validate)
        .service(api_list)
        .service(api_create)
        .service(api_get)
        .service(api_update)
        .service(api_delete);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(new_page)
        .service(edit_page)
        .service(delete_form);
}

/// The catalog as the page needs it: modules, settings, and the starting points.
#[derive(Serialize)]
struct CatalogView {
    #[serde(flatten)]
    catalog: Catalog,
    presets: Vec<assembly::Preset>,
}

fn catalog_view() -> CatalogView {
    CatalogView {
        catalog: Catalog::builtin(),
        presets: assembly::presets(),
    }
}

#[get("/catalog")]
async fn api_catalog(_member: CurrentMember) -> HttpResponse {
    HttpResponse::Ok().json(catalog_view())
}

#[derive(Deserialize)]
struct SpecBody {
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    dataset_version_id: Option<Uuid>,
}

#[derive(Serialize)]
struct Validated {
    valid: bool,
    #[serde(flatten)]
    assessment: Assessment,
}

/// Parses `spec` and checks it against `dataset_version_id` (in the member's organization).
async fn assess(
    state: &AppState,
    member: &CurrentMember,
    body: &SpecBody,
) -> Result<
    (
        tailor_modules::blueprint::Blueprint,
        Assessment,
        Option<Uuid>,
    ),
    Error,
> {
    let blueprint = assembly::parse_spec(&body.spec)?;
    let version = match body.dataset_version_id {
        Some(id) => Some(
            blueprints::dataset_version(&state.pool, member.org_id, id)
                .await?
                .ok_or_else(|| {
                    Error::validation(
                        "dataset_version_id",
                        "This dataset version does not exist in your organization.",
                    )
                })?,
        ),
        None => None,
    };
    let assessment = assembly::assess(&blueprint, version.as_ref());
    Ok((blueprint, assessment, version.map(|v| v.dataset_id)))
}

#[post("/blueprints/validate")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_validate(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<SpecBody>,
) -> Result<HttpResponse, Error> {
    let (_, assessment, _) = assess(&state, &member, &body).await?;
    Ok(HttpResponse::Ok().json(Validated {
        valid: assessment.errors.is_empty(),
        assessment,
    }))
}

/// What may be saved: a blueprint that compiles. Problems of the data alone (too few
/// examples of a class) do not stop saving; they stop the start of a job.
async fn checked(
    state: &AppState,
    member: &CurrentMember,
    body: &SpecBody,
) -> Result<NewBlueprint, Error> {
    let (blueprint, assessment, dataset_id) = assess(state, member, body).await?;
    if assessment.compiled.is_none() {
        return Err(Error::invalid(assessment.errors));
    }
    Ok(NewBlueprint {
        name: BlueprintName::parse(&blueprint.name)?,
        dataset_id,
        spec: assessment.blueprint,
    })
}

#[get("/blueprints")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(blueprints::list(&state.pool, member.org_id).await?))
}

#[post("/blueprints")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<SpecBody>,
) -> Result<HttpResponse, Error> {
    member.require_writer()?;
    let new = checked(&state, &member, &body).await?;
    let saved = blueprints::create(&state.pool, member.org_id, member.user_id, &new).await?;
    tracing::info!(blueprint_id = %saved.id, "blueprint saved");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/blueprints/{}", saved.id)))
        .json(saved))
}

#[get("/blueprints/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let found = blueprints::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    Ok(HttpResponse::Ok().json(found))
}

#[put("/blueprints/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_update(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
    body: web::Json<SpecBody>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    // Look up first, so that another organization's id is a 404 whatever the role.
    blueprints::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    let new = checked(&state, &member, &body).await?;
    let saved = blueprints::update(&state.pool, member.org_id, id, &new).await?;
    Ok(HttpResponse::Ok().json(saved))
}

#[delete("/blueprints/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_delete(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    blueprints::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    blueprints::delete(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- pages ----

#[get("/blueprints")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn list_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let mut context = member_context(&state, &member).await?;
    let saved = blueprints::list(&state.pool, member.org_id).await?;
    let rows: Vec<ListRow> = saved.iter().map(ListRow::of).collect();
    context.insert("blueprints", &rows);
    context.insert("can_write", &member.role.can_write());
    page(&state, lang, "blueprints.html", &context)
}

/// One line of the list: the saved blueprint and what it assembles.
#[derive(Serialize)]
struct ListRow<'a> {
    #[serde(flatten)]
    saved: &'a SavedBlueprint,
    inputs: String,
    outputs: String,
}

impl<'a> ListRow<'a> {
    fn of(saved: &'a SavedBlueprint) -> Self {
        let names = |key: &str| {
            saved.spec.0[key]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| {
                            let name = i["name"].as_str().unwrap_or("?");
                            match i["task"].as_str() {
                                Some(task) => format!("{name} ({task})"),
                                None => name.to_owned(),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        ListRow {
            saved,
            inputs: names("inputs"),
            outputs: names("outputs"),
        }
    }
}

#[derive(Deserialize)]
struct NewQuery {
    dataset_version_id: Option<Uuid>,
    preset: Option<String>,
}

/// JSON for a `<script type="application/json">` element: `</` cannot end the element.
fn script_json(value: &impl Serialize) -> Result<String, Error> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::Unexpected(anyhow::anyhow!("serializing page data: {e}")))?;
    Ok(text.replace("</", "<\\/"))
}

async fn assembly_page(
    state: &AppState,
    lang: Lang,
    member: &CurrentMember,
    saved: Option<SavedBlueprint>,
    query: NewQuery,
) -> PageResult {
    let mut context = member_context(state, member).await?;
    let choices = blueprints::version_choices(&state.pool, member.org_id).await?;
    // The version to start from: asked for, else the newest of the blueprint's dataset,
    // else the newest of the first dataset.
    let chosen = query
        .dataset_version_id
        .filter(|id| choices.iter().any(|c| c.version_id == *id))
        .or_else(|| {
            let dataset = saved.as_ref().and_then(|s| s.dataset_id);
            choices
                .iter()
                .find(|c| dataset.is_none() || Some(c.dataset_id) == dataset)
                .map(|c| c.version_id)
        });
    let spec = match (&saved, query.preset.as_deref()) {
        (Some(s), _) => s.spec.0.clone(),
        (None, Some(id)) => assembly::presets()
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.blueprint)
            .unwrap_or(Value::Null),
        (None, None) => Value::Null,
    };
    context.insert("saved", &saved);
    context.insert("spec_json", &script_json(&spec)?);
    context.insert("catalog_json", &script_json(&catalog_view())?);
    context.insert("choices", &choices);
    context.insert("chosen_version", &chosen);
    context.insert("can_write", &member.role.can_write());
    context.insert("ui_keys", UI_KEYS);
    // Labels and help texts of the catalog's settings, where the catalogs translate them
    // (a setting added to the module catalog later shows its field name and description).
    let strings = crate::i18n::catalog(lang).map_err(Error::Unexpected)?;
    let translated = |prefix: &str| -> Vec<String> {
        Catalog::builtin()
            .settings
            .into_iter()
            .map(|s| s.field)
            .filter(|f| strings.contains_key(&format!("{prefix}{f}")))
            .collect()
    };
    context.insert("setting_fields", &translated("blueprints.setting."));
    context.insert("help_fields", &translated("blueprints.help."));
    // A fresh key per rendering: a double click of "Start training" is one job.
    context.insert("idempotency_key", &Uuid::new_v4());
    page(state, lang, "blueprint.html", &context)
}

#[get("/blueprints/new")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn new_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    query: web::Query<NewQuery>,
) -> PageResult {
    assembly_page(&state, lang, &member, None, query.into_inner()).await
}

#[get("/blueprints/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn edit_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<NewQuery>,
) -> PageResult {
    let saved = blueprints::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    assembly_page(&state, lang, &member, Some(saved), query.into_inner()).await
}

#[derive(Deserialize)]
struct Empty {}

#[post("/blueprints/{id}/delete")]
#[tracing::instrument(skip_all)]
async fn delete_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<Uuid>,
) -> PageResult {
    let member = CurrentMember::resolve(&state, &req, form.user).await?;
    let id = path.into_inner();
    blueprints::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    blueprints::delete(&state.pool, member.org_id, id).await?;
    Ok(redirect("/blueprints"))
}
