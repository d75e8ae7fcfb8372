//! `POST /v1/models/{model}/predict`: the request body, the model it names, and the
//! answer with label names and scores.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tailor_core::OrgId;
use tailor_core::models::{self, ModelVersion, VersionStatus};
use tailor_modules::heads::Prediction;
use tailor_modules::package::OutputPrediction;
use tailor_modules::train::InputValue;
use uuid::Uuid;

use crate::error::ApiError;

/// `name` or `name@version` from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub version: Option<i32>,
}

impl ModelRef {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let (name, version) = match raw.rsplit_once('@') {
            Some((name, version)) => {
                let version = version
                    .strip_prefix('v')
                    .unwrap_or(version)
                    .parse::<i32>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        ApiError::validation(
                            "model",
                            format!(
                                "`{raw}`: the part after `@` must be a version number \
                                 (e.g. `{name}@3`)."
                            ),
                        )
                    })?;
                (name, Some(version))
            }
            None => (raw, None),
        };
        if name.is_empty() {
            return Err(ApiError::validation("model", "Name a model in the path."));
        }
        Ok(Self {
            name: name.to_owned(),
            version,
        })
    }
}

/// The model's id and the version to serve: the named one, or the published one.
#[tracing::instrument(skip(pool))]
pub async fn resolve(
    pool: &PgPool,
    org: OrgId,
    model: &ModelRef,
) -> Result<(Uuid, ModelVersion), ApiError> {
    let not_found = || ApiError::NotFound(format!("There is no model named `{}`.", model.name));
    let row: Option<(Uuid, Option<i32>)> =
        sqlx::query_as("SELECT id, published_version FROM models WHERE org_id = $1 AND name = $2")
            .bind(org)
            .bind(&model.name)
            .fetch_optional(pool)
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("finding a model")))?;
    let (model_id, published) = row.ok_or_else(not_found)?;
    let Some(number) = model.version.or(published) else {
        return Err(ApiError::NotFound(format!(
            "Model `{}` has no published version; publish one, or name a version \
             (`{}@1`).",
            model.name, model.name
        )));
    };
    let version = models::find_version(pool, org, model_id, number)
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("finding a version")))?
        .filter(|v| v.status == VersionStatus::Ready)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Model `{}` has no version {number} that can be served.",
                model.name
            ))
        })?;
    Ok((model_id, version))
}

/// Limits of one request (from `GatewaySettings`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    pub max_text_chars: usize,
}

/// The rows of a request body, one value per blueprint input in its order:
/// `{ "inputs": [ { "<input name>": "…" }, … ] }`, or `{ "text": "…" }` for a model with
/// one text input.
pub fn rows(
    body: &Value,
    inputs: &[&str],
    limits: Limits,
) -> Result<Vec<Vec<InputValue>>, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::validation(
            "",
            "The body must be a JSON object with `inputs` (or `text`).",
        ));
    };
    let text = |field: String, value: &Value| -> Result<InputValue, ApiError> {
        let Some(text) = value.as_str() else {
            return Err(ApiError::validation(
                field,
                "This input must be a string of text.",
            ));
        };
        let chars = text.chars().count();
        if chars > limits.max_text_chars {
            return Err(ApiError::validation(
                field,
                format!(
                    "This text has {chars} characters; the limit is {} characters per input.",
                    limits.max_text_chars
                ),
            ));
        }
        Ok(InputValue::Text(text.to_owned()))
    };
    match (object.get("inputs"), object.get("text")) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "text",
            "Send either `inputs` or `text`, not both.",
        )),
        (None, Some(value)) => {
            if inputs.len() != 1 {
                return Err(ApiError::validation(
                    "text",
                    format!(
                        "`text` is for models with one input; this one takes {} — send \
                         `inputs` with an object per item.",
                        inputs.join(", ")
                    ),
                ));
            }
            Ok(vec![vec![text("text".into(), value)?]])
        }
        (Some(items), None) => {
            let Some(items) = items.as_array() else {
                return Err(ApiError::validation(
                    "inputs",
                    "`inputs` must be an array with one object per item.",
                ));
            };
            if items.is_empty() {
                return Err(ApiError::validation("inputs", "`inputs` has no items."));
            }
            if items.len() > limits.max_items {
                return Err(ApiError::TooLarge(format!(
                    "`inputs` has {} items; the limit is {} items per request.",
                    items.len(),
                    limits.max_items
                )));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let Some(item) = item.as_object() else {
                        return Err(ApiError::validation(
                            format!("inputs[{i}]"),
                            format!(
                                "Each item must be an object keyed by {}.",
                                inputs.join(", ")
                            ),
                        ));
                    };
                    if let Some(extra) = item.keys().find(|k| !inputs.contains(&k.as_str())) {
                        return Err(ApiError::validation(
                            format!("inputs[{i}].{extra}"),
                            format!(
                                "The model has no input `{extra}`; it takes {}.",
                                inputs.join(", ")
                            ),
                        ));
                    }
                    inputs
                        .iter()
                        .map(|name| {
                            let field = format!("inputs[{i}].{name}");
                            match item.get(*name) {
                                Some(value) => text(field, value),
                                None => Err(ApiError::validation(
                                    field,
                                    format!("Item {i} has no `{name}`."),
                                )),
                            }
                        })
                        .collect()
                })
                .collect()
        }
        (None, None) => Err(ApiError::validation(
            "inputs",
            "The body needs `inputs` (an array of objects) or `text`.",
        )),
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OutputAnswer {
    Class {
        label: String,
        scores: BTreeMap<String, f32>,
    },
    Labels {
        labels: Vec<String>,
        scores: BTreeMap<String, f32>,
    },
    Number {
        value: f64,
    },
    Tags {
        tags: Vec<String>,
    },
}

/// One item's answer: output name → its prediction.
pub fn answer(row: Vec<OutputPrediction>) -> BTreeMap<String, OutputAnswer> {
    row.into_iter()
        .map(|p| {
            let answer = match p.prediction {
                Prediction::Class { label, .. } => OutputAnswer::Class {
                    label,
                    scores: p.scores,
                },
                Prediction::Labels { labels, .. } => OutputAnswer::Labels {
                    labels,
                    scores: p.scores,
                },
                Prediction::Number(value) => OutputAnswer::Number { value },
                Prediction::Tags { tags, .. } => OutputAnswer::Tags { tags },
            };
            (p.output, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_items: 2,
        max_text_chars: 5,
    };

    #[test]
    fn model_refs_parse_with_and_without_version() {
        assert_eq!(
            ModelRef::parse("rating@3").unwrap(),
            ModelRef {
                name: "rating".into(),
                version: Some(3)
            }
        );
        assert_eq!(ModelRef::parse("rating").unwrap().version, None);
        assert_eq!(ModelRef::parse("rating@v2").unwrap().version, Some(2));
        assert!(ModelRef::parse("rating@x").is_err());
        assert!(ModelRef::parse("rating@0").is_err());
    }

    #[test]
    fn bodies_become_rows_in_input_order_with_named_errors() {
        let rows = rows(
            &json!({ "inputs": [{ "b": "y", "a": "x" }] }),
            &["a", "b"],
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![vec![
                InputValue::Text("x".into()),
                InputValue::Text("y".into())
            ]]
        );
        assert_eq!(
            super::rows(&json!({ "text": "hi" }), &["a"], LIMITS).unwrap(),
            vec![vec![InputValue::Text("hi".into())]]
        );
        let field = |body: Value, inputs: &[&str]| match super::rows(&body, inputs, LIMITS) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(json!({ "inputs": [{ "a": "x" }] }), &["a", "b"]),
            "inputs[0].b"
        );
        assert_eq!(
            field(json!({ "inputs": [{ "a": 1 }] }), &["a"]),
            "inputs[0].a"
        );
        assert_eq!(
            field(json!({ "inputs": [{ "a": "toolong" }] }), &["a"]),
            "inputs[0].a"
        );
        assert_eq!(
            field(json!({ "inputs": [{ "a": "x", "c": "y" }] }), &["a"]),
            "inputs[0].c"
        );
        assert_eq!(field(json!({ "text": "x" }), &["a", "b"]), "text");
        match super::rows(
            &json!({ "inputs": [{ "a": "x" }, { "a": "x" }, { "a": "x" }] }),
            &["a"],
            LIMITS,
        ) {
            Err(ApiError::TooLarge(message)) => assert!(message.contains("limit is 2 items")),
            other => panic!("{other:?}"),
        }
    }
}
