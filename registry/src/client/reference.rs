//! Where an artifact is: a registry, a repository, a tag or a digest.

use std::fmt;
use std::str::FromStr;

use super::error::{ClientError, Result};
use crate::names::{ManifestRef, RepoName, Tag};

/// `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:…`. The registry
/// is `host[:port]`, optionally with `http://` or `https://`; without a
/// scheme, loopback hosts are spoken to over plain HTTP and others over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `http(s)://host[:port]`
    pub registry: String,
    pub repo: RepoName,
    pub reference: ManifestRef,
}

impl FromStr for Reference {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || ClientError::Reference(s.to_owned());
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest),
            Some(_) => return Err(bad()),
            None => (None, s),
        };
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        if host.is_empty() || path.is_empty() {
            return Err(bad());
        }
        let scheme = scheme.unwrap_or_else(|| {
            let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if bare == "localhost" || bare.starts_with("127.") || bare == "[::1]" {
                "http"
            } else {
                "https"
            }
        });
        let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
            let digest = digest.parse().map_err(|_| bad())?;
            (repo, ManifestRef::Digest(digest))
        } else {
            match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => {
                    (repo, ManifestRef::Tag(Tag::parse(tag)?))
                }
                _ => (path, ManifestRef::Tag(Tag::parse("latest")?)),
            }
        };
        Ok(Reference {
            registry: format!("{scheme}://{host}"),
            repo: RepoName::parse(repo)?,
            reference,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self
            .registry
            .split_once("://")
            .map_or(self.registry.as_str(), |(_, h)| h);
        match &self.reference {
            ManifestRef::Tag(t) => write!(f, "{host}/{}:{t}", self.repo),
            ManifestRef::Digest(d) => write!(f, "{host}/{}@{d}", self.repo),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::digest_of;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let r: Reference = "127.0.0.1:5000/kelp/hello:v1".parse().unwrap();
        assert_eq!(r.registry, "http://127.0.0.1:5000");
        assert_eq!(r.repo.as_str(), "kelp/hello");
        assert_eq!(r.reference, ManifestRef::Tag(Tag::parse("v1").unwrap()));
        assert_eq!(r.to_string(), "127.0.0.1:5000/kelp/hello:v1");

        let d = digest_of(b"x");
        let r: Reference = format!("registry.example.com/hello@{d}").parse().unwrap();
        assert_eq!(r.registry, "https://registry.example.com");
        assert_eq!(r.reference, ManifestRef::Digest(d));

        let r: Reference = "http://example.com:80/hello".parse().unwrap();
        assert_eq!(r.registry, "http://example.com:80");
        assert_eq!(r.reference.to_string(), "latest");

        for bad in ["hello", "host/", "ftp://h/x", "h/UPPER:v1", "h/x@sha256:12"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad}");
        }
    }
}
