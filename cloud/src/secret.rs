//! Secrets the cloud hands out — API tokens, provisioning keys, device keys —
//! and how it recognises them again.
//!
//! A secret is 32 random bytes as hex, behind a prefix that says what it is
//! (`kelp_pk_` for a provisioning key, `kelp_dk_` for a device key), so one
//! pasted in the wrong place is recognisable. Only its sha256 is stored, and
//! a presented secret is looked up by its hash: the lookup's timing can say
//! at most something about a hash, which does not help anyone find a secret,
//! so no constant-time comparison is needed after it.

/// Prefix of a provisioning key.
pub const PROVISIONING_PREFIX: &str = "kelp_pk_";
/// Prefix of a device key.
pub const DEVICE_PREFIX: &str = "kelp_dk_";

#[derive(Debug, thiserror::Error)]
#[error("no randomness for a secret: {0}")]
pub struct NoRandomness(String);

/// A new secret: `prefix` and 32 random bytes from the OS, as hex.
pub fn new_secret(prefix: &str) -> Result<String, NoRandomness> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// A new random id for a stored row: 16 random bytes, as a UUID.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What is stored instead of `secret`: its sha256, as `sha256:<hex>` (the
/// form the data directory's `tokens` file holds).
pub fn hash(secret: &str) -> String {
    kelp_registry::TokenHash::of(secret).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_differ_and_are_stored_as_their_hash() {
        let a = new_secret(DEVICE_PREFIX).unwrap();
        let b = new_secret(DEVICE_PREFIX).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kelp_dk_") && a.len() == 8 + 64, "{a}");
        assert!(hash(&a).starts_with("sha256:") && hash(&a).len() == 7 + 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[8..]));
    }
}
