//! Datasets: upload (JSON API and page), list, profile, download, column-type changes.
//!
//! Upload format: the raw file is the request body (`POST /api/v1/datasets?name=…&file_name=…`,
//! any content type), not multipart: the browser sends the `File` as is with
//! `XMLHttpRequest`, and scripts use `curl --data-binary @file`. `file_name` is optional
//! and only helps to tell CSV from TSV; ZIP archives are recognised by their first bytes.
//! Authentication: a bearer token, or the session cookie with the `X-CSRF-Token` header.

use actix_web::{HttpRequest, HttpResponse, get, http::header, patch, post, web};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tailor_core::{
    Error,
    datasets::{self, Author, DatasetName, DatasetVersion, SchemaChange, UploadError},
    error::OrNotFound,
};
use tailor_datasets::{ColumnType, WarningKind};
use uuid::Uuid;

use super::{PageResult, member_context, page};
use crate::{auth::CurrentMember, i18n::Lang, state::AppState};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_upload)
        .service(api_list)
        .service(api_get)
        .service(api_version)
        .service(api_download)
        .service(api_change_schema);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page).service(profile_page);
}

#[derive(Deserialize)]
struct UploadQuery {
    name: Option<String>,
    file_name: Option<String>,
}

#[derive(Serialize)]
struct Uploaded<'a> {
    dataset_id: Uuid,
    version: &'a DatasetVersion,
}

#[post("/datasets")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_upload(
    state: web::Data<AppState>,
    member: CurrentMember,
    req: HttpRequest,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> Result<HttpResponse, UploadError> {
    member.require_writer()?;
    let name = DatasetName::parse(query.name.as_deref().unwrap_or(""))?;
    let file_name = query
        .file_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(255).collect::<String>());
    let limit = state.settings.application.max_upload_bytes;
    // Refuse a declared oversize body before reading any of it.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(UploadError::Unreadable(
            tailor_datasets::DatasetError::TooLarge { limit },
        ));
    }
    let file = datasets::spool(body.map(|chunk| chunk.map_err(|e| e.to_string())), limit).await?;
    let version = datasets::upload(
        &state.pool,
        &state.store,
        Author {
            org: member.org_id,
            user: member.user_id,
        },
        &name,
        file_name.as_deref(),
        file,
        limit,
    )
    .await?;
    tracing::info!(dataset_id = %version.dataset_id, version = version.version, rows = version.row_count, "dataset version stored");
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!(
                "/api/v1/datasets/{}/versions/{}",
                version.dataset_id, version.version
            ),
        ))
        .json(Uploaded {
            dataset_id: version.dataset_id,
            version: &version,
        }))
}

#[get("/datasets")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(datasets::list(&state.pool, member.org_id).await?))
}

#[get("/datasets/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    let dataset = datasets::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    let versions = datasets::versions(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "dataset": dataset, "versions": versions })))
}

#[get("/datasets/{id}/versions/{version}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_version(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, version) = path.into_inner();
    let found = datasets::find_version(&state.pool, member.org_id, id, version)
        .await?
        .or_not_found()?;
    Ok(HttpResponse::Ok().json(found))
}

#[get("/datasets/{id}/versions/{version}/download")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_download(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, version) = path.into_inner();
    let found = datasets::find_version(&state.pool, member.org_id, id, version)
        .await?
        .or_not_found()?;
    let stream = datasets::open(&state.store, &found).await?;
    let ext = found.format.as_str();
    let content_type = match ext {
        "zip" => "application/zip",
        "jsonl" => "application/x-ndjson",
        "tsv" => "text/tab-separated-values",
        _ => "text/csv",
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"dataset-v{version}.{ext}\""),
        ))
        .insert_header(("X-Content-SHA256", found.sha256.clone()))
        .streaming(stream))
}

#[patch("/datasets/{id}/versions/{version}/schema")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_change_schema(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
    body: web::Json<SchemaChange>,
) -> Result<HttpResponse, UploadError> {
    let (id, version) = path.into_inner();
    // Look up first, so that another organization's id is a 404 whatever the role.
    datasets::find_version(&state.pool, member.org_id, id, version)
        .await
        .map_err(Error::from)?
        .or_not_found()?;
    member.require_writer()?;
    let created = datasets::change_schema(
        &state.pool,
        &state.store,
        Author {
            org: member.org_id,
            user: member.user_id,
        },
        id,
        version,
        body.into_inner(),
        state.settings.application.max_upload_bytes,
    )
    .await?;
    Ok(HttpResponse::Created().json(Uploaded {
        dataset_id: created.dataset_id,
        version: &created,
    }))
}

// ---- pages ----

#[get("/datasets")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn list_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let mut context = member_context(&state, &member).await?;
    context.insert(
        "datasets",
        &datasets::list(&state.pool, member.org_id).await?,
    );
    context.insert("can_write", &member.role.can_write());
    context.insert(
        "max_upload_mib",
        &(state.settings.application.max_upload_bytes / (1024 * 1024)),
    );
    page(&state, lang, "datasets.html", &context)
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i32>,
}

/// One bar of a chart: a label, a count and its width in percent of the largest.
#[derive(Serialize)]
struct Bar {
    label: String,
    count: u64,
    percent: f64,
}

fn bars(items: impl Iterator<Item = (String, u64)>) -> Vec<Bar> {
    let items: Vec<_> = items.collect();
    let max = items.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1);
    items
        .into_iter()
        .map(|(label, count)| Bar {
            label,
            count,
            percent: (count as f64 * 100.0 / max as f64).max(0.5),
        })
        .collect()
}

#[derive(Serialize)]
struct Chart {
    column: String,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct ShownWarning {
    kind: String,
    message: String,
}

/// Warning kinds with a title in the catalogs (`datasets.warning.{kind}`); others: "other".
const WARNING_KINDS: &[&str] = &[
    "rare_classes",
    "similar_labels",
    "conflicting_labels",
    "single_class",
    "duplicate_rows",
    "empty_rows",
    "unnamed_columns",
    "empty_column",
    "mostly_numbers",
    "numbers_look_like_classes",
    "unreferenced_files",
    "mixed_modalities",
    "tracking_limited",
];

fn warning_kind(kind: &WarningKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .filter(|k| WARNING_KINDS.contains(&k.as_str()))
        .unwrap_or_else(|| "other".into())
}

#[get("/datasets/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn profile_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<VersionQuery>,
) -> PageResult {
    let id = path.into_inner();
    let dataset = datasets::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    let number = query.version.unwrap_or(dataset.latest_version);
    let version = datasets::find_version(&state.pool, member.org_id, id, number)
        .await?
        .or_not_found()?;
    let versions = datasets::versions(&state.pool, member.org_id, id).await?;
    let profile = &version.profile.0;
    let labels: Vec<Chart> = profile
        .columns
        .iter()
        .filter(|c| c.column_type.is_label())
        .map(|c| Chart {
            column: c.name.clone(),
            bars: bars(c.top_values.iter().map(|v| (v.value.clone(), v.count))),
        })
        .collect();
    let lengths: Vec<Chart> = profile
        .columns
        .iter()
        .filter(|c| c.column_type == ColumnType::Text)
        .filter_map(|c| {
            let stats = c.length.as_ref()?;
            Some(Chart {
                column: c.name.clone(),
                bars: bars(stats.histogram.iter().map(|b| {
                    let label = match b.max {
                        Some(max) => format!("{}–{}", b.min, max),
                        None => format!("{}+", b.min),
                    };
                    (label, b.count)
                })),
            })
        })
        .collect();
    let warnings: Vec<ShownWarning> = version
        .warnings
        .0
        .iter()
        .map(|w| ShownWarning {
            kind: warning_kind(&w.kind),
            message: w.message.clone(),
        })
        .collect();
    let column_types: Vec<&str> = [
        ColumnType::Text,
        ColumnType::Category,
        ColumnType::Number,
        ColumnType::MultiLabel,
        ColumnType::File,
    ]
    .iter()
    .map(|t| t.as_str())
    .collect();
    let mut context = member_context(&state, &member).await?;
    context.insert("dataset", &dataset);
    context.insert("version", &version);
    context.insert("profile", profile);
    context.insert("versions", &versions);
    context.insert("label_charts", &labels);
    context.insert("length_charts", &lengths);
    context.insert("warnings", &warnings);
    context.insert("column_types", &column_types);
    context.insert("can_write", &member.role.can_write());
    page(&state, lang, "dataset.html", &context)
}
