//! API tokens: listed, created, revoked.

use kelp_core::api::{NewToken, TokenCreated, TokenInfo};
use reqwest::Method;

use crate::{Client, Error};

impl Client {
    /// The live API tokens (never the tokens themselves).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get(&["api", "v1", "tokens"], &[]).await
    }

    /// A new API token named `name`; the token is in the answer, this once.
    pub async fn create_token(&self, name: &str) -> Result<TokenCreated, Error> {
        let body = NewToken {
            name: name.to_owned(),
        };
        self.send(Method::POST, &["api", "v1", "tokens"], &[], Some(&body))
            .await
    }

    /// Revokes the token with id `id`; the cloud refuses to revoke the last
    /// live one (409).
    pub async fn revoke_token(&self, id: &str) -> Result<(), Error> {
        self.empty(
            Method::DELETE,
            &["api", "v1", "tokens", id],
            &[],
            None::<&()>,
        )
        .await
    }
}
