//! API keys of the current organization: create (the key is shown once), list, revoke,
//! usage (chart and CSV) and the audit log of gateway calls.
//!
//! Roles: admins and owners create and revoke keys and read the audit log; members see
//! keys and their usage (so they know which key their application uses) but change
//! nothing; viewers see nothing of keys (403). Only owners switch the keeping of request
//! bodies in the audit log. See `tailor_core::api_keys` for the gateway's side.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, get, http::header, post, web};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tailor_core::{
    Error,
    accounts::Role,
    api_keys::{self, ApiKeyRecord, NewApiKey},
    error::OrNotFound,
    models,
};
use tera::Context;
use uuid::Uuid;

use super::{PageResult, member_context, page, redirect};
use crate::{
    auth::{CsrfForm, CurrentMember},
    i18n::Lang,
    state::AppState,
};

/// Audit entries a page or request shows at most.
const AUDIT_LIMIT: i64 = 200;

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_list)
        .service(api_create)
        .service(api_get)
        .service(api_revoke)
        .service(api_usage_csv)
        .service(api_audit)
        .service(api_audit_settings);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(create_form)
        .service(key_page)
        .service(revoke_form)
        .service(audit_page)
        .service(audit_settings_form);
}

/// Viewers see nothing of API keys.
fn require_member(member: &CurrentMember) -> Result<(), Error> {
    if member.role >= Role::Member {
        Ok(())
    } else {
        Err(Error::forbidden(
            "Viewers cannot see API keys; ask an admin for access.",
        ))
    }
}

fn require_owner(member: &CurrentMember) -> Result<(), Error> {
    if member.role == Role::Owner {
        Ok(())
    } else {
        Err(Error::forbidden(
            "Only owners decide whether request bodies are kept.",
        ))
    }
}

/// A key as the API and pages show it: the record and its state.
#[derive(Serialize)]
struct KeyView {
    #[serde(flatten)]
    record: ApiKeyRecord,
    state: &'static str,
}

fn view(record: ApiKeyRecord) -> KeyView {
    let state = record.state(Utc::now());
    KeyView { record, state }
}

// ---- JSON API ----

#[derive(Deserialize)]
struct NewKeyJson {
    name: String,
    /// `"all"` or a list of model ids; read by [`parse_models`] so that a bad entry is
    /// named (`models[2]`).
    models: serde_json::Value,
    actions: Vec<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    rate_limit_per_minute: Option<i64>,
}

/// `None` for `"all"`, else the listed model ids.
fn parse_models(value: &serde_json::Value) -> Result<Option<Vec<Uuid>>, Error> {
    match value {
        serde_json::Value::String(s) if s.trim().eq_ignore_ascii_case("all") => Ok(None),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .and_then(|s| Uuid::parse_str(s.trim()).ok())
                    .ok_or_else(|| {
                        Error::validation(format!("models[{i}]"), "Give a model by its id.")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(Error::validation(
            "models",
            "Send \"all\" or a list of model ids.",
        )),
    }
}

#[get("/api-keys")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    require_member(&member)?;
    let keys: Vec<KeyView> = api_keys::list(&state.pool, member.org_id)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(HttpResponse::Ok().json(keys))
}

#[post("/api-keys")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_create(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<NewKeyJson>,
) -> Result<HttpResponse, Error> {
    member.require_admin()?;
    let body = body.into_inner();
    let models = parse_models(&body.models)?;
    let new = NewApiKey::parse(
        &body.name,
        models,
        &body.actions,
        body.expires_at,
        body.rate_limit_per_minute,
    )?;
    let (record, key) = api_keys::create(&state.pool, member.org_id, member.user_id, &new).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "api_key": view(record), "key": key.expose() })))
}

#[get("/api-keys/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    require_member(&member)?;
    let record = api_keys::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    Ok(HttpResponse::Ok().json(view(record)))
}

#[post("/api-keys/{id}/revoke")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_revoke(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    // Another organization's key is a 404 whatever the role.
    require_member(&member)?;
    api_keys::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    let record = api_keys::revoke(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::Ok().json(view(record)))
}

#[derive(Deserialize)]
struct UsageQuery {
    /// Days back from now; 30 by default, at most 366.
    days: Option<i64>,
}

#[get("/api-keys/{id}/usage.csv")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_usage_csv(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Error> {
    require_member(&member)?;
    let record = api_keys::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    let days = query.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(Error::validation(
            "days",
            "Choose from 1 to 366 days of usage.",
        ));
    }
    let rows = api_keys::usage(
        &state.pool,
        member.org_id,
        record.id,
        Utc::now() - Duration::days(days),
    )
    .await?;
    let mut csv = String::from(
        "minute,model_version_id,model_version,requests,items,tokens,errors,latency_ms_sum,latency_ms_max,latency_ms_mean\n",
    );
    for r in &rows {
        let mean = if r.requests > 0 {
            r.latency_ms_sum as f64 / r.requests as f64
        } else {
            0.0
        };
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.1}\n",
            r.minute.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.model_version_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            csv_field(r.model_version.as_deref().unwrap_or("")),
            r.requests,
            r.items,
            r.tokens,
            r.errors,
            r.latency_ms_sum,
            r.latency_ms_max,
            mean
        ));
    }
    let filename = format!("api-key-{}-usage.csv", record.prefix);
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ))
        .body(csv))
}

/// Quotes a CSV field when needed; a leading `=+-@` is defused against spreadsheet
/// formulas.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

#[get("/audit-log")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_audit(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Error> {
    member.require_admin()?;
    let limit = query.limit.unwrap_or(AUDIT_LIMIT);
    if !(1..=1000).contains(&limit) {
        return Err(Error::validation("limit", "Choose from 1 to 1000 entries."));
    }
    let entries = api_keys::audit_entries(&state.pool, member.org_id, limit).await?;
    let bodies = api_keys::audit_request_bodies(&state.pool, member.org_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "audit_request_bodies": bodies,
        "entries": entries,
    })))
}

#[derive(Deserialize)]
struct AuditSettings {
    audit_request_bodies: bool,
}

#[post("/audit-log/settings")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_audit_settings(
    state: web::Data<AppState>,
    member: CurrentMember,
    body: web::Json<AuditSettings>,
) -> Result<HttpResponse, Error> {
    require_owner(&member)?;
    api_keys::set_audit_request_bodies(&state.pool, member.org_id, body.audit_request_bodies)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "audit_request_bodies": body.audit_request_bodies
    })))
}

// ---- pages ----

/// The list page's context: keys, models to choose from, the caller's rights.
async fn list_context(state: &AppState, member: &CurrentMember) -> Result<Context, Error> {
    let mut context = member_context(state, member).await?;
    let org_models = models::list(&state.pool, member.org_id).await?;
    let names: HashMap<Uuid, String> = org_models.iter().map(|m| (m.id, m.name.clone())).collect();
    let keys: Vec<serde_json::Value> = api_keys::list(&state.pool, member.org_id)
        .await?
        .into_iter()
        .map(|r| {
            let model_names: Option<Vec<String>> = r.model_ids.as_ref().map(|ids| {
                ids.iter()
                    .map(|id| names.get(id).cloned().unwrap_or_else(|| id.to_string()))
                    .collect()
            });
            let mut v = serde_json::to_value(view(r)).unwrap_or_default();
            v["model_names"] = serde_json::to_value(model_names).unwrap_or_default();
            v
        })
        .collect();
    let choices: Vec<serde_json::Value> = org_models
        .iter()
        .map(|m| serde_json::json!({ "id": m.id, "name": m.name }))
        .collect();
    context.insert("keys", &keys);
    context.insert("models", &choices);
    context.insert("can_manage_keys", &member.role.can_manage_members());
    context.insert("created", &None::<()>);
    context.insert("errors", &Vec::<tailor_core::error::FieldError>::new());
    context.insert("form", &HashMap::<String, String>::new());
    // Ticked boxes of the create form (`model:<id>`, `action:<name>`).
    context.insert("checked", &["action:predict"]);
    Ok(context)
}

#[get("/api-keys")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn list_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    require_member(&member)?;
    let context = list_context(&state, &member).await?;
    page(&state, lang, "api_keys.html", &context)
}

/// The create form: `name`, `models` (`all` or `some`), `model:<id>` checkboxes,
/// `action:<name>` checkboxes, `expires_on` (a date, UTC end of day),
/// `rate_limit_per_minute`.
fn parse_form(form: &HashMap<String, String>) -> Result<NewApiKey, Error> {
    let field = |name: &str| form.get(name).map(|s| s.trim()).unwrap_or("");
    let models = if field("models") == "some" {
        let mut ids = Vec::new();
        for key in form.keys() {
            if let Some(id) = key.strip_prefix("model:") {
                ids.push(
                    Uuid::parse_str(id)
                        .map_err(|_| Error::validation("models", "Unknown model."))?,
                );
            }
        }
        Some(ids)
    } else {
        None
    };
    let actions: Vec<String> = api_keys::Action::ALL
        .iter()
        .map(|a| a.as_str())
        .filter(|a| form.contains_key(&format!("action:{a}")))
        .map(str::to_owned)
        .collect();
    let expires_at = match field("expires_on") {
        "" => None,
        raw => Some(
            NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(23, 59, 59))
                .map(|t| t.and_utc())
                .ok_or_else(|| {
                    Error::validation("expires_at", "Enter the expiry as a date (YYYY-MM-DD).")
                })?,
        ),
    };
    let rate_limit = match field("rate_limit_per_minute") {
        "" => None,
        raw => Some(raw.parse::<i64>().map_err(|_| {
            Error::validation(
                "rate_limit_per_minute",
                "Enter the rate limit as a whole number of requests per minute.",
            )
        })?),
    };
    NewApiKey::parse(field("name"), models, &actions, expires_at, rate_limit)
}

#[post("/api-keys")]
#[tracing::instrument(skip_all)]
async fn create_form(
    state: web::Data<AppState>,
    lang: Lang,
    req: HttpRequest,
    form: CsrfForm<HashMap<String, String>>,
) -> PageResult {
    let CsrfForm { user, form } = form;
    let member = CurrentMember::resolve(&state, &req, user).await?;
    require_member(&member)?;
    member.require_admin()?;
    let created = match parse_form(&form) {
        Ok(new) => api_keys::create(&state.pool, member.org_id, member.user_id, &new).await,
        Err(e) => Err(e),
    };
    // Input problems are shown beside the form; anything else is an error page.
    let created = match created {
        Err(e) if e.field_errors().is_empty() => return Err(e.into()),
        other => other,
    };
    let mut context = list_context(&state, &member).await?;
    let status = match created {
        Ok((record, key)) => {
            context.insert(
                "created",
                &serde_json::json!({ "id": record.id, "name": record.name, "key": key.expose() }),
            );
            actix_web::http::StatusCode::CREATED
        }
        Err(e) => {
            context.insert("errors", &e.field_errors());
            context.insert("form", &form);
            let checked: Vec<&String> = form
                .keys()
                .filter(|k| k.starts_with("model:") || k.starts_with("action:"))
                .collect();
            context.insert("checked", &checked);
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    let mut response = page(&state, lang, "api_keys.html", &context)?;
    *response.status_mut() = status;
    // The page holds a secret: never keep it in a cache or the history cache.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// A chart range: its length and the width of one bucket.
fn chart_range(raw: Option<&str>) -> (&'static str, Duration, i32) {
    match raw {
        Some("1h") => ("1h", Duration::hours(1), 1),
        Some("7d") => ("7d", Duration::days(7), 120),
        Some("30d") => ("30d", Duration::days(30), 720),
        _ => ("24h", Duration::hours(24), 15),
    }
}

/// An SVG line chart of requests and errors, drawn on the server (no script, no CDN).
#[derive(Serialize)]
struct Chart {
    width: u32,
    height: u32,
    requests: String,
    errors: String,
    max: i64,
    total_requests: i64,
    total_errors: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// Horizontal grid lines: (y, label).
    grid: Vec<(f64, i64)>,
}

fn chart(
    points: &[api_keys::UsagePoint],
    start: DateTime<Utc>,
    span: Duration,
    bucket: i32,
) -> Chart {
    const WIDTH: u32 = 720;
    const HEIGHT: u32 = 200;
    const PAD: f64 = 8.0;
    // Room above the top line for its label.
    const TOP: f64 = 16.0;
    let buckets = (span.num_minutes() / i64::from(bucket)).max(1) as usize;
    let mut requests = vec![0i64; buckets + 1];
    let mut errors = vec![0i64; buckets + 1];
    for p in points {
        let i =
            ((p.at - start).num_minutes() / i64::from(bucket)).clamp(0, buckets as i64) as usize;
        requests[i] += p.requests;
        errors[i] += p.errors;
    }
    let max = requests.iter().copied().max().unwrap_or(0).max(1);
    let x = |i: usize| PAD + (f64::from(WIDTH) - 2.0 * PAD) * i as f64 / buckets as f64;
    let y =
        |v: i64| f64::from(HEIGHT) - PAD - (f64::from(HEIGHT) - PAD - TOP) * v as f64 / max as f64;
    let line = |values: &[i64]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut marks = vec![0, max / 2, max];
    marks.dedup();
    let grid = marks.into_iter().map(|v| (y(v), v)).collect();
    Chart {
        width: WIDTH,
        height: HEIGHT,
        requests: line(&requests),
        errors: line(&errors),
        max,
        total_requests: requests.iter().sum(),
        total_errors: errors.iter().sum(),
        start,
        end: start + span,
        grid,
    }
}

#[get("/api-keys/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn key_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<RangeQuery>,
) -> PageResult {
    require_member(&member)?;
    let record = api_keys::find(&state.pool, member.org_id, path.into_inner())
        .await?
        .or_not_found()?;
    let (range, span, bucket) = chart_range(query.range.as_deref());
    let now = Utc::now();
    // Whole minutes, as the usage rows are.
    let start = now - span;
    let start = DateTime::from_timestamp(start.timestamp() / 60 * 60, 0).unwrap_or(start);
    let points =
        api_keys::usage_series(&state.pool, member.org_id, record.id, start, bucket).await?;
    let org_models = models::list(&state.pool, member.org_id).await?;
    let model_names: Option<Vec<String>> = record.model_ids.as_ref().map(|ids| {
        ids.iter()
            .map(|id| {
                org_models
                    .iter()
                    .find(|m| m.id == *id)
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| id.to_string())
            })
            .collect()
    });
    let mut context = member_context(&state, &member).await?;
    context.insert("key", &view(record));
    context.insert("model_names", &model_names);
    context.insert("range", range);
    context.insert("chart", &chart(&points, start, span, bucket));
    context.insert("can_manage_keys", &member.role.can_manage_members());
    page(&state, lang, "api_keys_key.html", &context)
}

#[derive(Deserialize)]
struct Empty {}

#[post("/api-keys/{id}/revoke")]
#[tracing::instrument(skip_all)]
async fn revoke_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<Uuid>,
    form: CsrfForm<Empty>,
) -> PageResult {
    let member = CurrentMember::resolve(&state, &req, form.user).await?;
    let id = path.into_inner();
    require_member(&member)?;
    api_keys::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    api_keys::revoke(&state.pool, member.org_id, id).await?;
    Ok(redirect(&format!("/api-keys/{id}")))
}

#[get("/audit-log")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn audit_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    member.require_admin()?;
    let mut context = member_context(&state, &member).await?;
    context.insert(
        "entries",
        &api_keys::audit_entries(&state.pool, member.org_id, AUDIT_LIMIT).await?,
    );
    context.insert(
        "audit_request_bodies",
        &api_keys::audit_request_bodies(&state.pool, member.org_id).await?,
    );
    context.insert("is_owner", &(member.role == Role::Owner));
    context.insert("limit", &AUDIT_LIMIT);
    page(&state, lang, "api_keys_audit.html", &context)
}

#[derive(Deserialize)]
struct AuditSettingsForm {
    /// Present (`on`) when the checkbox is ticked.
    #[serde(default)]
    audit_request_bodies: Option<String>,
}

#[post("/audit-log/settings")]
#[tracing::instrument(skip_all)]
async fn audit_settings_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<AuditSettingsForm>,
) -> PageResult {
    let CsrfForm { user, form } = form;
    let member = CurrentMember::resolve(&state, &req, user).await?;
    require_owner(&member)?;
    api_keys::set_audit_request_bodies(
        &state.pool,
        member.org_id,
        form.audit_request_bodies.is_some(),
    )
    .await?;
    Ok(redirect("/audit-log"))
}
