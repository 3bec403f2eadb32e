//! The OCI error body, which the client reads, and the server's one error
//! type, which writes it.

#[cfg(feature = "server")]
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
#[cfg(feature = "server")]
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The error codes of the OCI distribution spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    Toomanyrequests,
}

/// What went wrong serving a request. Client errors carry a status, an OCI
/// code and a message that names what was wrong; internal errors are logged in
/// full and answered with a bare 500.
#[cfg(feature = "server")]
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: ErrorCode,
        message: String,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    #[error("{context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(feature = "server")]
impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        if let ApiError::Client { headers, .. } = &mut self {
            headers.push((name, value));
        }
        self
    }

    pub(crate) fn internal(context: impl Into<String>, source: std::io::Error) -> Self {
        ApiError::Internal {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// The OCI code, if this is a client error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Client { code, .. } => Some(*code),
            ApiError::Internal { .. } => None,
        }
    }
}

/// The spec's error body: `{"errors":[{"code":…,"message":…}]}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
}

#[cfg(feature = "server")]
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, extra) = match self {
            ApiError::Client {
                status,
                code,
                message,
                headers,
            } => (status, code, message, headers),
            ApiError::Internal { context, source } => {
                tracing::error!(error = %source, context = %context, "registry request failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
            }
        };
        let body = ErrorBody {
            errors: vec![ErrorEntry { code, message }],
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The body is the JSON above, whatever the headers an error was
        // given say (a 416 carries the upload's headers, which describe an
        // empty answer): a `Content-Length` or `Transfer-Encoding` that does
        // not describe this body would make a kept-alive connection read
        // its bytes as the start of the next answer.
        for (name, value) in extra {
            if !is_framing(&name) {
                headers.insert(name, value);
            }
        }
        (status, headers, json).into_response()
    }
}

/// Headers that say how long the body is or what it is; every error answer
/// sets these from its own body.
#[cfg(feature = "server")]
fn is_framing(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
    ]
    .contains(name)
}
