//! A PostgreSQL schema of its own on a shared server, for a test or a
//! benchmark run: created empty, reached through [`ScratchSchema::url`]
//! (the server's URL with the schema as `search_path`), and removed with
//! [`ScratchSchema::remove`].

use sqlx::Connection as _;

pub struct ScratchSchema {
    base: String,
    name: String,
}

impl ScratchSchema {
    /// A new schema named `PREFIX_<random>` on the server `base` names.
    pub async fn create(base: &str, prefix: &str) -> Result<ScratchSchema, sqlx::Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(base).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await?;
        Ok(ScratchSchema {
            base: base.to_owned(),
            name,
        })
    }

    /// The URL a cloud given it works in this schema.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    /// Drops the schema and everything in it.
    pub async fn remove(self) -> Result<(), sqlx::Error> {
        let mut conn = sqlx::PgConnection::connect(&self.base).await?;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}
