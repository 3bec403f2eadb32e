//! The one error every call returns.

use reqwest::StatusCode;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cloud refused the request and said why.
    #[error("{}", refusal(url, message, field.as_deref(), *status))]
    Refused {
        /// The cloud's URL.
        url: String,
        status: StatusCode,
        /// The cloud's message, on one line.
        message: String,
        /// The part of the request at fault (`name`, `services.web.image`,
        /// `limit`), when one is.
        field: Option<String>,
    },
    /// Something answered, but not as a Kelp cloud does: an error status
    /// without the API's error body, or a success that is not JSON.
    #[error("{url} answered {what}; is it a Kelp cloud?")]
    NotKelp { url: String, what: String },
    /// A success whose body is not the type this version expects.
    #[error("the answer of the Kelp cloud at {url} is not what this version of kelp expects")]
    Unexpected {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot reach the Kelp cloud at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read the answer of the Kelp cloud at {url}")]
    Read {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The cloud's URL is not one a client can use.
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot build an HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
}

fn refusal(url: &str, message: &str, field: Option<&str>, status: StatusCode) -> String {
    if status == StatusCode::UNAUTHORIZED {
        return format!("the Kelp cloud at {url} refused the API token: {message}");
    }
    match field {
        Some(field) => format!("{message} (field `{field}`; {status})"),
        None => format!("{message} ({status})"),
    }
}

impl Error {
    /// The status of a refusal; none for an error that is not one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The cloud's message, for a refusal.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Refused { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether the cloud answered 404: what was named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}
