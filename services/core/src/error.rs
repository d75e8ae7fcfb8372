//! The error every Tailor HTTP service returns, and its mapping to statuses and JSON.
//!
//! Users see `{"error": {"code", "message", "field"?}}`; the message of `Unexpected` is
//! always a generic sentence, while the log keeps the whole cause chain.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that does not parse; `field` names it so forms and clients can point at it.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// Several problems with one input at once (a blueprint the compiler refused); never
    /// empty. The body names the first in `field`/`message` and lists all in `details`.
    #[error("{} problems", .0.len())]
    Invalid(Vec<FieldError>),
    /// Absent, or owned by another organization (which must look the same).
    #[error("not found")]
    NotFound,
    /// Signed in and in this organization, but the role does not allow it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("unauthorized")]
    Unauthorized,
    /// A uniqueness clash; `field` names what clashed when there is one.
    #[error("conflict: {message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    #[error("payload too large")]
    PayloadTooLarge,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Every problem of `errors` at once; a single one is a plain `Validation`.
    pub fn invalid(mut errors: Vec<FieldError>) -> Self {
        match errors.len() {
            0 => Error::validation("", "The input is not valid."),
            1 => {
                let e = errors.remove(0);
                Error::validation(e.field, e.message)
            }
            _ => Error::Invalid(errors),
        }
    }

    /// The problems of a validation error, each with its field (empty for other errors).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            Error::Validation { field, message } => vec![FieldError {
                field: field.clone(),
                message: message.clone(),
            }],
            Error::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        }
    }

    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Conflict {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden(message.into())
    }

    /// Machine-readable code; stable, clients may match on it.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation { .. } | Error::Invalid(_) => "validation",
            Error::NotFound => "not_found",
            Error::Forbidden(_) => "forbidden",
            Error::Unauthorized => "unauthorized",
            Error::Conflict { .. } => "conflict",
            Error::PayloadTooLarge => "payload_too_large",
            Error::Unexpected(_) => "unexpected",
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Validation { field, .. } => Some(field),
            Error::Invalid(errors) => errors.first().map(|e| e.field.as_str()),
            Error::Conflict { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The sentence a user may read: never internal text.
    pub fn public_message(&self) -> String {
        match self {
            Error::Validation { message, .. } => message.clone(),
            Error::Invalid(errors) => errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            Error::NotFound => "Not found.".into(),
            Error::Forbidden(message) => message.clone(),
            Error::Unauthorized => "Sign in first, or use a valid API token.".into(),
            Error::Conflict { message, .. } => message.clone(),
            Error::PayloadTooLarge => "The upload is larger than this server accepts.".into(),
            Error::Unexpected(_) => "Something went wrong on our side.".into(),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
                field: self.field().map(str::to_owned),
                details: match self {
                    Error::Invalid(errors) => errors.clone(),
                    _ => Vec::new(),
                },
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem, when there are several (`Invalid`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// One problem of an input, naming its field (`outputs[0].decoder.module`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Validation { .. } | Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Error::Unexpected(e) = self {
            // `{:#}` keeps the whole context chain in the log.
            tracing::error!(error = format!("{e:#}"), "unexpected error");
        }
        HttpResponse::build(self.status_code()).json(self.body())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::NotFound,
            other => Error::Unexpected(anyhow::Error::new(other).context("database query")),
        }
    }
}

/// Turns a lookup that found nothing into `NotFound`.
pub trait OrNotFound<T> {
    fn or_not_found(self) -> Result<T>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self) -> Result<T> {
        self.ok_or(Error::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn render(e: Error) -> (StatusCode, serde_json::Value) {
        let response = e.error_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn each_variant_maps_to_its_status_and_json_body() {
        let cases = [
            (
                Error::validation("email", "Enter an email address."),
                422,
                "validation",
                Some("email"),
            ),
            (
                Error::invalid(vec![
                    FieldError {
                        field: "outputs".into(),
                        message: "No label.".into(),
                    },
                    FieldError {
                        field: "inputs[0].name".into(),
                        message: "No column.".into(),
                    },
                ]),
                422,
                "validation",
                Some("outputs"),
            ),
            (Error::NotFound, 404, "not_found", None),
            (Error::forbidden("Admins only."), 403, "forbidden", None),
            (Error::Unauthorized, 401, "unauthorized", None),
            (
                Error::conflict("email", "Taken."),
                409,
                "conflict",
                Some("email"),
            ),
            (Error::PayloadTooLarge, 413, "payload_too_large", None),
            (
                Error::Unexpected(anyhow::anyhow!("secret internal detail")),
                500,
                "unexpected",
                None,
            ),
        ];
        for (error, status, code, field) in cases {
            let (got_status, body) = render(error).await;
            assert_eq!(got_status.as_u16(), status, "{body}");
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].is_string());
            match field {
                Some(f) => assert_eq!(body["error"]["field"], f),
                None => assert!(body["error"].get("field").is_none(), "{body}"),
            }
        }
    }

    #[actix_web::test]
    async fn several_problems_are_all_listed_in_details() {
        let (_, body) = render(Error::invalid(vec![
            FieldError {
                field: "a".into(),
                message: "First.".into(),
            },
            FieldError {
                field: "b".into(),
                message: "Second.".into(),
            },
        ]))
        .await;
        assert_eq!(body["error"]["message"], "First.");
        assert_eq!(body["error"]["details"][1]["field"], "b");
        assert_eq!(body["error"]["details"][1]["message"], "Second.");
        // One problem stays a plain validation error, without details.
        let (_, body) = render(Error::invalid(vec![FieldError {
            field: "a".into(),
            message: "Only.".into(),
        }]))
        .await;
        assert_eq!(body["error"]["field"], "a");
        assert!(body["error"].get("details").is_none(), "{body}");
    }

    #[actix_web::test]
    async fn unexpected_errors_hide_internal_text() {
        let error = Error::Unexpected(anyhow::anyhow!("password=hunter2").context("connecting"));
        let (_, body) = render(error).await;
        let text = body.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("connecting"),
            "{text}"
        );
    }

    #[test]
    fn row_not_found_is_not_found() {
        assert!(matches!(
            Error::from(sqlx::Error::RowNotFound),
            Error::NotFound
        ));
    }
}
