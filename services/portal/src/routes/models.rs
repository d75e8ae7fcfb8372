//! The model registry: models, versions (metrics against the baseline, confusion matrix,
//! lineage, model card), publish / archive / roll back, compare, and the PEFT adapter
//! download — as pages and as the JSON API.
//!
//! Who may do what: everyone in the organization reads and downloads; publishing,
//! archiving and rolling back change what the gateway serves to every application, so
//! they are for admins and owners.

use actix_web::{HttpRequest, HttpResponse, get, http::header, post, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tailor_core::{
    Error,
    error::OrNotFound,
    models::{self, ModelVersion},
};
use uuid::Uuid;

use super::{PageResult, html_escape, member_context, page, redirect};
use crate::{
    auth::{CsrfForm, CurrentMember},
    i18n::Lang,
    state::AppState,
};

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.service(api_list)
        .service(api_model)
        .service(api_version)
        .service(api_publish)
        .service(api_archive)
        .service(api_rollback)
        .service(api_compare)
        .service(api_card)
        .service(api_adapter);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(compare_page)
        .service(model_page)
        .service(version_page)
        .service(publish_form)
        .service(archive_form)
        .service(rollback_form)
        .service(page_adapter);
}

/// A version as lists show it: the row and its headline numbers.
#[derive(Serialize)]
struct VersionSummary<'a> {
    #[serde(flatten)]
    version: &'a ModelVersion,
    headline: models::Headline,
}

fn summaries(versions: &[ModelVersion]) -> Vec<VersionSummary<'_>> {
    versions
        .iter()
        .map(|v| VersionSummary {
            version: v,
            headline: models::headline(&v.metrics.0),
        })
        .collect()
}

async fn version_or_404(
    state: &AppState,
    member: &CurrentMember,
    model: Uuid,
    version: i32,
) -> Result<ModelVersion, Error> {
    models::find_version(&state.pool, member.org_id, model, version)
        .await?
        .or_not_found()
}

/// Finds the version (404 across organizations, whatever the role), then checks the role.
async fn admin_version(
    state: &AppState,
    member: &CurrentMember,
    model: Uuid,
    version: i32,
) -> Result<(), Error> {
    version_or_404(state, member, model, version).await?;
    member.require_admin()
}

// ---- JSON API ----

#[get("/models")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(models::list(&state.pool, member.org_id).await?))
}

#[get("/models/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_model(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    let model = models::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    let versions = models::versions(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "model": model,
        "versions": summaries(&versions),
    })))
}

#[get("/models/{id}/versions/{version}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_version(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, n) = path.into_inner();
    let version = version_or_404(&state, &member, id, n).await?;
    Ok(HttpResponse::Ok().json(VersionSummary {
        headline: models::headline(&version.metrics.0),
        version: &version,
    }))
}

async fn model_json(state: &AppState, member: &CurrentMember, id: Uuid) -> Result<Value, Error> {
    let model = models::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    Ok(serde_json::to_value(model).map_err(anyhow::Error::from)?)
}

#[post("/models/{id}/versions/{version}/publish")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_publish(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, n) = path.into_inner();
    admin_version(&state, &member, id, n).await?;
    models::publish(&state.pool, member.org_id, id, n).await?;
    Ok(HttpResponse::Ok().json(model_json(&state, &member, id).await?))
}

#[post("/models/{id}/versions/{version}/archive")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_archive(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, n) = path.into_inner();
    admin_version(&state, &member, id, n).await?;
    models::archive(&state.pool, member.org_id, id, n).await?;
    let version = version_or_404(&state, &member, id, n).await?;
    Ok(HttpResponse::Ok().json(version))
}

#[post("/models/{id}/rollback")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_rollback(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    models::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    models::roll_back(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::Ok().json(model_json(&state, &member, id).await?))
}

#[derive(Deserialize)]
struct CompareQuery {
    a: i32,
    b: i32,
}

/// Two versions side by side: their rows, headline numbers per output, and the blueprint
/// settings that differ.
#[derive(Serialize)]
struct Comparison<'a> {
    a: VersionSummary<'a>,
    b: VersionSummary<'a>,
    outputs: Vec<OutputComparison>,
    settings: Vec<models::SettingDiff>,
    same_dataset: bool,
}

#[derive(Serialize)]
struct OutputComparison {
    name: String,
    metric: String,
    a_tuned: Option<f64>,
    b_tuned: Option<f64>,
    a_baseline: Option<f64>,
    b_baseline: Option<f64>,
    /// Tuned headline of b minus that of a.
    delta: Option<f64>,
    /// Every number of the tuned metrics: name, a, b, b − a.
    scalars: Vec<ScalarRow>,
}

/// A metric's name, its value in a and in b, and b − a.
type ScalarRow = (String, Option<f64>, Option<f64>, Option<f64>);

fn compare<'a>(a: &'a ModelVersion, b: &'a ModelVersion) -> Comparison<'a> {
    let outputs_of = |v: &ModelVersion| -> Vec<Value> {
        v.metrics
            .0
            .get("outputs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (oa, ob) = (outputs_of(a), outputs_of(b));
    let mut outputs = Vec::new();
    for out_a in &oa {
        let name = out_a
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let out_b = ob
            .iter()
            .find(|o| o.get("name").and_then(Value::as_str) == Some(&name));
        let num = |o: Option<&Value>, k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_f64);
        let scalars_a = scalars(out_a.get("tuned"));
        let scalars_b = scalars(out_b.and_then(|o| o.get("tuned")));
        let mut names: Vec<&String> = scalars_a.iter().map(|(k, _)| k).collect();
        names.extend(scalars_b.iter().map(|(k, _)| k));
        names.sort();
        names.dedup();
        let get = |s: &[(String, f64)], k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        outputs.push(OutputComparison {
            metric: out_a
                .get("headline")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            delta: num(out_b, "tuned_value")
                .zip(num(Some(out_a), "tuned_value"))
                .map(|(b, a)| b - a),
            a_tuned: num(Some(out_a), "tuned_value"),
            b_tuned: num(out_b, "tuned_value"),
            a_baseline: num(Some(out_a), "baseline_value"),
            b_baseline: num(out_b, "baseline_value"),
            scalars: names
                .into_iter()
                .map(|k| {
                    let (a, b) = (get(&scalars_a, k), get(&scalars_b, k));
                    (k.clone(), a, b, b.zip(a).map(|(b, a)| b - a))
                })
                .collect(),
            name,
        });
    }
    Comparison {
        settings: models::setting_diffs(&a.blueprint.0, &b.blueprint.0),
        same_dataset: a.dataset_version_id == b.dataset_version_id,
        outputs,
        a: VersionSummary {
            version: a,
            headline: models::headline(&a.metrics.0),
        },
        b: VersionSummary {
            version: b,
            headline: models::headline(&b.metrics.0),
        },
    }
}

/// The top-level numbers of one output's metrics (`accuracy`, `macro_f1`, `rmse` …).
fn scalars(metrics: Option<&Value>) -> Vec<(String, f64)> {
    metrics
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

#[get("/models/{id}/compare")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_compare(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<CompareQuery>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    let a = version_or_404(&state, &member, id, query.a).await?;
    let b = version_or_404(&state, &member, id, query.b).await?;
    Ok(HttpResponse::Ok().json(compare(&a, &b)))
}

/// The PEFT adapter of a version as a ZIP: `adapter_config.json`,
/// `adapter_model.safetensors` (and those of further inputs), the heads and
/// `manifest.json`, each checked against the manifest before anything is sent.
async fn adapter_zip(
    state: &AppState,
    member: &CurrentMember,
    id: Uuid,
    n: i32,
) -> Result<HttpResponse, Error> {
    let version = version_or_404(state, member, id, n).await?;
    let files = models::read_verified(&state.store, &version, models::is_adapter_file).await?;
    if !files
        .keys()
        .any(|k| k.ends_with(models::ADAPTER_WEIGHTS_FILE))
    {
        return Err(Error::conflict(
            "version",
            "This version has no adapter: its blueprint trains the heads only (no LoRA).",
        ));
    }
    let zip = tokio::task::spawn_blocking(move || models::zip_stored(&files))
        .await
        .map_err(anyhow::Error::from)?;
    let file_name: String = version
        .model_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/zip"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}-v{n}-adapter.zip\""),
        ))
        .insert_header(("X-Manifest-SHA256", version.manifest_sha256.clone()))
        .body(zip))
}

/// The model card (Markdown), checked against the manifest.
#[get("/models/{id}/versions/{version}/card")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_card(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, n) = path.into_inner();
    let version = version_or_404(&state, &member, id, n).await?;
    let card = models::model_card(&state.store, &version)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/markdown; charset=utf-8"))
        .body(card))
}

#[get("/models/{id}/versions/{version}/adapter")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_adapter(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> Result<HttpResponse, Error> {
    let (id, n) = path.into_inner();
    adapter_zip(&state, &member, id, n).await
}

// ---- pages ----

#[get("/models")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn list_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let mut context = member_context(&state, &member).await?;
    context.insert("models", &models::list(&state.pool, member.org_id).await?);
    page(&state, lang, "models.html", &context)
}

#[get("/models/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn model_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> PageResult {
    let id = path.into_inner();
    let model = models::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    let versions = models::versions(&state.pool, member.org_id, id).await?;
    let mut context = member_context(&state, &member).await?;
    let can_roll_back = model.published_version.is_some_and(|published| {
        versions
            .iter()
            .any(|v| v.version < published && v.status == models::VersionStatus::Ready)
    });
    context.insert("model", &model);
    context.insert("versions", &summaries(&versions));
    context.insert("can_roll_back", &can_roll_back);
    context.insert("can_publish", &member.role.can_manage_members());
    page(&state, lang, "model.html", &context)
}

/// One output of a report, ready for the page.
#[derive(Serialize)]
struct OutputView {
    name: String,
    task: String,
    headline: String,
    tuned_value: Option<f64>,
    baseline_value: Option<f64>,
    gain: Option<f64>,
    /// Numbers of the tuned and baseline metrics: name, tuned, baseline.
    scalars: Vec<(String, f64, Option<f64>)>,
    /// Per class (label, entity type): label, support, tuned P/R/F1, baseline P/R/F1.
    classes: Vec<ClassRow>,
    confusion_svg: Option<String>,
    baseline_confusion_svg: Option<String>,
}

#[derive(Serialize)]
struct ClassRow {
    label: String,
    support: Option<u64>,
    tuned: [Option<f64>; 3],
    baseline: [Option<f64>; 3],
}

fn class_list(metrics: Option<&Value>) -> Vec<Value> {
    let Some(m) = metrics else { return vec![] };
    ["per_class", "per_label", "per_type"]
        .iter()
        .find_map(|k| m.get(*k).and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn output_views(report: &Value) -> Vec<OutputView> {
    let outputs = report
        .get("outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    outputs
        .iter()
        .map(|o| {
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let f = |k: &str| o.get(k).and_then(Value::as_f64);
            let tuned = o.get("tuned");
            let baseline = o.get("baseline");
            let base_scalars = scalars(baseline);
            let base_classes = class_list(baseline);
            let prf = |c: Option<&Value>| {
                ["precision", "recall", "f1"]
                    .map(|k| c.and_then(|c| c.get(k)).and_then(Value::as_f64))
            };
            OutputView {
                name: s("name"),
                task: s("task"),
                headline: s("headline"),
                tuned_value: f("tuned_value"),
                baseline_value: f("baseline_value"),
                gain: f("gain"),
                scalars: scalars(tuned)
                    .into_iter()
                    .map(|(k, v)| {
                        let b = base_scalars.iter().find(|(n, _)| *n == k).map(|(_, b)| *b);
                        (k, v, b)
                    })
                    .collect(),
                classes: class_list(tuned)
                    .iter()
                    .map(|c| {
                        let label = c.get("label").and_then(Value::as_str).unwrap_or("");
                        let b = base_classes
                            .iter()
                            .find(|b| b.get("label").and_then(Value::as_str) == Some(label));
                        ClassRow {
                            label: label.to_owned(),
                            support: c.get("support").and_then(Value::as_u64),
                            tuned: prf(Some(c)),
                            baseline: prf(b),
                        }
                    })
                    .collect(),
                confusion_svg: tuned.and_then(confusion_svg),
                baseline_confusion_svg: baseline.and_then(confusion_svg),
            }
        })
        .collect()
}

/// The confusion matrix (`confusion[true][predicted]` over `labels`) as an SVG heat map:
/// each cell shaded by its share of its true class's rows, with the count written in it.
fn confusion_svg(metrics: &Value) -> Option<String> {
    let labels: Vec<String> = metrics
        .get("labels")?
        .as_array()?
        .iter()
        .map(|l| l.as_str().unwrap_or("").to_owned())
        .collect();
    let matrix: Vec<Vec<u64>> = metrics
        .get("confusion")?
        .as_array()?
        .iter()
        .map(|row| {
            row.as_array()
                .map(|r| r.iter().map(|c| c.as_u64().unwrap_or(0)).collect())
                .unwrap_or_default()
        })
        .collect();
    let n = labels.len();
    if n == 0 || matrix.len() != n {
        return None;
    }
    let cell = if n > 12 { 28 } else { 44 };
    let short = |l: &str| -> String {
        let t: String = l.chars().take(14).collect();
        if l.chars().count() > 14 {
            format!("{t}…")
        } else {
            t
        }
    };
    let left = 120;
    let top = 110;
    let size = n * cell;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"confusion\" role=\"img\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">",
        w = left + size + 10,
        h = top + size + 10
    );
    for (j, label) in labels.iter().enumerate() {
        let x = left + j * cell + cell / 2;
        svg.push_str(&format!(
            "<text class=\"col-label\" transform=\"translate({x},{y}) rotate(-45)\">{}</text>",
            html_escape(&short(label)),
            y = top - 6
        ));
    }
    for (i, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = top + i * cell;
        svg.push_str(&format!(
            "<text class=\"row-label\" x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{}</text>",
            html_escape(&short(&labels[i])),
            x = left - 6,
            ty = y + cell / 2 + 4
        ));
        for (j, count) in row.iter().enumerate().take(n) {
            let share = if total == 0 {
                0.0
            } else {
                *count as f64 / total as f64
            };
            // Right answers in blue, mistakes in red; darker is a larger share.
            let (r, g, b) = if i == j { (37, 99, 235) } else { (220, 38, 38) };
            let alpha = 0.06 + 0.94 * share;
            let x = left + j * cell;
            let ink = if share > 0.55 { "#fff" } else { "#111" };
            svg.push_str(&format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" \
                 fill=\"rgba({r},{g},{b},{alpha:.3})\" stroke=\"#fff\">\
                 <title>{t} → {p}: {count} ({pct:.0}%)</title></rect>\
                 <text x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\" fill=\"{ink}\">{count}</text>",
                t = html_escape(&labels[i]),
                p = html_escape(&labels[j]),
                pct = share * 100.0,
                cx = x + cell / 2,
                cy = y + cell / 2 + 4
            ));
        }
    }
    svg.push_str("</svg>");
    Some(svg)
}

#[get("/models/{id}/versions/{version}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn version_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> PageResult {
    let (id, n) = path.into_inner();
    let version = version_or_404(&state, &member, id, n).await?;
    // A damaged card is said on the page; the rest of the version still shows.
    let (card, card_error) = match models::model_card(&state.store, &version).await {
        Ok(card) => (card, None),
        Err(e) => (None, Some(e.public_message())),
    };
    let report = &version.metrics.0;
    let mut context = member_context(&state, &member).await?;
    context.insert(
        "version",
        &VersionSummary {
            version: &version,
            headline: models::headline(report),
        },
    );
    context.insert("outputs", &output_views(report));
    context.insert("report", report);
    context.insert(
        "blueprint_json",
        &serde_json::to_string_pretty(&version.blueprint.0).unwrap_or_default(),
    );
    context.insert("card", &card);
    context.insert("card_error", &card_error);
    context.insert(
        "base_checkpoints",
        &version
            .base_checkpoints
            .0
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map(str::to_owned).unwrap_or(v.to_string()),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    context.insert("can_publish", &member.role.can_manage_members());
    let others = models::versions(&state.pool, member.org_id, id).await?;
    let others: Vec<i32> = others
        .iter()
        .map(|v| v.version)
        .filter(|v| *v != n)
        .collect();
    context.insert("other_versions", &others);
    page(&state, lang, "model_version.html", &context)
}

#[get("/models/{id}/compare")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn compare_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
    query: web::Query<CompareQuery>,
) -> PageResult {
    let id = path.into_inner();
    let a = version_or_404(&state, &member, id, query.a).await?;
    let b = version_or_404(&state, &member, id, query.b).await?;
    let mut context = member_context(&state, &member).await?;
    context.insert("cmp", &compare(&a, &b));
    page(&state, lang, "model_compare.html", &context)
}

#[derive(Deserialize)]
struct Empty {}

async fn form_member(
    state: &AppState,
    req: &HttpRequest,
    form: CsrfForm<Empty>,
) -> Result<CurrentMember, Error> {
    CurrentMember::resolve(state, req, form.user).await
}

#[post("/models/{id}/versions/{version}/publish")]
#[tracing::instrument(skip_all)]
async fn publish_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<(Uuid, i32)>,
) -> PageResult {
    let member = form_member(&state, &req, form).await?;
    let (id, n) = path.into_inner();
    admin_version(&state, &member, id, n).await?;
    models::publish(&state.pool, member.org_id, id, n).await?;
    Ok(redirect(&format!("/models/{id}")))
}

#[post("/models/{id}/versions/{version}/archive")]
#[tracing::instrument(skip_all)]
async fn archive_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<(Uuid, i32)>,
) -> PageResult {
    let member = form_member(&state, &req, form).await?;
    let (id, n) = path.into_inner();
    admin_version(&state, &member, id, n).await?;
    models::archive(&state.pool, member.org_id, id, n).await?;
    Ok(redirect(&format!("/models/{id}")))
}

#[post("/models/{id}/rollback")]
#[tracing::instrument(skip_all)]
async fn rollback_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<Uuid>,
) -> PageResult {
    let member = form_member(&state, &req, form).await?;
    let id = path.into_inner();
    models::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_admin()?;
    models::roll_back(&state.pool, member.org_id, id).await?;
    Ok(redirect(&format!("/models/{id}")))
}

#[get("/models/{id}/versions/{version}/adapter")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn page_adapter(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<(Uuid, i32)>,
) -> PageResult {
    let (id, n) = path.into_inner();
    Ok(adapter_zip(&state, &member, id, n).await?)
}
