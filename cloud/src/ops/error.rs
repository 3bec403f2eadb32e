//! The one error type of the fleet operations. The JSON API answers it as
//! `{"error": "<what was wrong>", "field": "<where>"}` (`field` only when one
//! field of the request is at fault); the dashboard shows the same message
//! on a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kelp_core::api::ErrorBody;

use crate::db::DbError;

/// What went wrong with an operation. Client errors say exactly what; a
/// server fault is logged in full and answered with a bare 500.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            field: None,
            message: message.into(),
        }
    }

    /// A 400 blaming one field of the request.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl From<crate::secret::NoRandomness> for ApiError {
    fn from(e: crate::secret::NoRandomness) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, field, message) = match self {
            ApiError::Client {
                status,
                field,
                message,
            } => (status, field, message),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "fleet API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "internal error".to_owned(),
                )
            }
        };
        let body = ErrorBody {
            error: message,
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kelp\""),
            );
        }
        response
    }
}
