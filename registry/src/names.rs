//! Repository names, tags and references, checked by the spec's grammar.
//!
//! These strings become paths on disk, so they are checked here, once, by a
//! parser that accepts exactly the spec's regular expressions: no `..`, no
//! leading dot or slash, no empty component, nothing but `[a-z0-9._/-]` in a
//! name and `[A-Za-z0-9._-]` in a tag.

use std::fmt;

use kelp_core::Digest;

/// Longest repository name accepted. Common clients cap `host:port/name` at
/// 255 characters, so a longer name could be pushed but never pulled.
pub const MAX_NAME_LEN: usize = 255;

/// Longest tag, as the spec fixes it.
pub const MAX_TAG_LEN: usize = 128;

/// A repository name matching
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "repository name `{0}` is invalid: use lowercase letters and digits, separated by `.`, `_`, `__`, `-` or `/`"
    )]
    Repo(String),
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    RepoTooLong,
    #[error(
        "tag `{0}` is invalid: use up to 128 of `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`"
    )]
    Tag(String),
}

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::RepoTooLong);
        }
        if !s.split('/').all(component_ok) {
            return Err(NameError::Repo(s.to_owned()));
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: `.`, `_`, `__` or `-+`.
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > MAX_TAG_LEN {
            return Err(NameError::Tag(s.to_owned()));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<tag-or-digest>` of a manifest URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestRef {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestRef::Tag(t) => t.fmt(f),
            ManifestRef::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for good in [
            "hello",
            "kelp/hello",
            "a.b_c__d---e/f0",
            "library/ubuntu",
            "x",
            "0/1/2",
        ] {
            assert!(RepoName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "Hello", "../etc", "a/../b", "a//b", "/a", "a/", "a..b", "a___b", ".a", "a-",
            "a b", "a%2fb", "a\\b",
        ] {
            let err = RepoName::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        assert_eq!(
            RepoName::parse(&"a".repeat(256)),
            Err(NameError::RepoTooLong)
        );
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for good in ["v1", "latest", "_x", "1.2.3-rc.1", &"a".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }
}
