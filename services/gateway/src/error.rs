//! The gateway's errors: one JSON shape `{ "error": { "code", "message", "field"? } }`,
//! with codes clients can match on (a bad key, a limit, a full queue) and `Retry-After`
//! on 429s.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use tailor_core::api_keys::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A missing, malformed, mistyped, unknown, revoked or expired API key (never
    /// `KeyError::Database`, which is `Unexpected`).
    #[error(transparent)]
    Key(KeyError),
    /// The key does not allow this action (predict, embed).
    #[error("key lacks scope {0}")]
    Scope(&'static str),
    /// No such model (or version) in the key's organization and scope.
    #[error("not found: {0}")]
    NotFound(String),
    /// The model version cannot be served (files damaged, base missing …).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    TooLarge(String),
    /// The key's own rate limit.
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    /// The inference queue is full.
    #[error("busy")]
    Busy { retry_after: u64 },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Key(e) => e.code(),
            ApiError::Scope(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unavailable(_) => "model_unavailable",
            ApiError::Validation { .. } => "validation",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Busy { .. } => "busy",
            ApiError::Unexpected(_) => "unexpected",
        }
    }

    /// The sentence a client may read: never internal text.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Key(e) => e.public_message().into(),
            ApiError::Scope(action) => format!("This API key does not allow `{action}`."),
            ApiError::NotFound(message)
            | ApiError::Unavailable(message)
            | ApiError::TooLarge(message) => message.clone(),
            ApiError::Validation { message, .. } => message.clone(),
            ApiError::RateLimited { retry_after } => {
                format!("This API key's rate limit is reached; retry in {retry_after} s.")
            }
            ApiError::Busy { retry_after } => {
                format!("The gateway's inference queue is full; retry in {retry_after} s.")
            }
            ApiError::Unexpected(_) => "Something went wrong on our side.".into(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::Validation { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Database(e) => {
                ApiError::Unexpected(anyhow::Error::new(e).context("authenticating an API key"))
            }
            other => ApiError::Key(other),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Key(_) => StatusCode::UNAUTHORIZED,
            ApiError::Scope(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } | ApiError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Unexpected(e) = self {
            tracing::error!(error = format!("{e:#}"), "unexpected error");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited { retry_after } | ApiError::Busy { retry_after } = self {
            response.insert_header(("Retry-After", retry_after.to_string()));
        }
        if self.status_code() == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        let mut detail = serde_json::json!({
            "code": self.code(),
            "message": self.public_message(),
        });
        if let Some(field) = self.field() {
            detail["field"] = field.into();
        }
        response.json(serde_json::json!({ "error": detail }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn each_error_maps_to_its_status_code_and_shape() {
        let cases = [
            (KeyError::Malformed.into(), 401, "key_malformed"),
            (KeyError::BadChecksum.into(), 401, "key_bad_checksum"),
            (KeyError::Unknown.into(), 401, "key_unknown"),
            (KeyError::Revoked.into(), 401, "key_revoked"),
            (KeyError::Expired.into(), 401, "key_expired"),
            (ApiError::Scope("predict"), 403, "forbidden"),
            (ApiError::NotFound("No model.".into()), 404, "not_found"),
            (ApiError::validation("inputs", "Bad."), 422, "validation"),
            (ApiError::TooLarge("Big.".into()), 413, "payload_too_large"),
            (
                ApiError::RateLimited { retry_after: 3 },
                429,
                "rate_limited",
            ),
            (ApiError::Busy { retry_after: 1 }, 429, "busy"),
            (
                KeyError::Database(sqlx::Error::PoolTimedOut).into(),
                500,
                "unexpected",
            ),
            (
                ApiError::Unexpected(anyhow::anyhow!("secret detail")),
                500,
                "unexpected",
            ),
        ];
        for (error, status, code) in cases {
            let response = error.error_response();
            assert_eq!(response.status().as_u16(), status);
            if status == 429 {
                assert!(response.headers().contains_key("retry-after"));
            }
            let body: serde_json::Value =
                serde_json::from_slice(&to_bytes(response.into_body()).await.unwrap()).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert!(!body.to_string().contains("secret detail"));
        }
    }
}
