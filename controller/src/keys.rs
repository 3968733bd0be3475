//! API key values: generation from the OS RNG, hashing, masking, custom-value rules and expiry.
//! Only hashes are stored; plaintext leaves the process once, in the create/regenerate answer.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Prefix of generated keys.
pub const PREFIX: &str = "apip_";

/// Why a key request is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The OS random source failed.
    #[error("the system random source is unavailable")]
    Rng,
    /// A custom value breaks the rules.
    #[error("apiKey must be 20-128 printable ASCII characters without spaces")]
    BadValue,
    /// An expiry is malformed or in the past.
    #[error("{0}")]
    BadExpiry(String),
}

/// A new key: `apip_` + 64 lowercase hex characters (32 bytes from the OS RNG).
pub fn generate() -> Result<String, KeyError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| KeyError::Rng)?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

/// Checks a caller-supplied value: 20-128 printable ASCII characters, no spaces.
pub fn check_custom(value: &str) -> Result<(), KeyError> {
    let ok = (20..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic());
    if ok { Ok(()) } else { Err(KeyError::BadValue) }
}

/// SHA-256 of a key value, hex encoded: what is stored and what the policy engine compares.
pub fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// `***` followed by the last five characters.
pub fn mask(value: &str) -> String {
    let tail: String = value
        .chars()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("***{tail}")
}

/// `expiresIn`: a positive count of a unit.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpiresIn {
    /// How many units.
    pub duration: i64,
    /// seconds, minutes, hours, days, weeks or months (30 days).
    pub unit: String,
}

/// Resolves `expiresAt` / `expiresIn` against `now` into an RFC 3339 instant, if any.
pub fn expiry(
    expires_at: Option<&str>,
    expires_in: Option<&ExpiresIn>,
    now: DateTime<Utc>,
) -> Result<Option<String>, KeyError> {
    let at = match (expires_at, expires_in) {
        (Some(_), Some(_)) => {
            return Err(KeyError::BadExpiry(
                "give either expiresAt or expiresIn, not both".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(s), None) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| KeyError::BadExpiry("expiresAt must be an RFC 3339 time".into()))?
            .with_timezone(&Utc),
        (None, Some(e)) => {
            let per = match e.unit.as_str() {
                "seconds" => 1,
                "minutes" => 60,
                "hours" => 3600,
                "days" => 86_400,
                "weeks" => 604_800,
                "months" => 2_592_000,
                _ => {
                    return Err(KeyError::BadExpiry(
                        "expiresIn.unit must be seconds, minutes, hours, days, weeks or months"
                            .into(),
                    ));
                }
            };
            let secs = e
                .duration
                .checked_mul(per)
                .filter(|s| *s > 0 && *s <= 100 * 365 * 86_400)
                .ok_or_else(|| {
                    KeyError::BadExpiry(
                        "expiresIn.duration must be positive and at most 100 years".into(),
                    )
                })?;
            now + Duration::seconds(secs)
        }
    };
    if at <= now {
        return Err(KeyError::BadExpiry("the expiry is in the past".into()));
    }
    Ok(Some(at.to_rfc3339_opts(SecondsFormat::Secs, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate().unwrap();
        assert_eq!(k.len(), 5 + 64);
        assert!(k.starts_with("apip_"));
        assert!(
            k[5..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(k, generate().unwrap());
    }

    #[test]
    fn hashing_and_masking() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(mask("apip_0123456789abcdef"), "***bcdef");
        assert_eq!(mask("abc"), "***abc");
    }

    #[test]
    fn custom_values() {
        assert!(check_custom("a-custom-key-value-123").is_ok());
        assert_eq!(check_custom("short"), Err(KeyError::BadValue));
        assert_eq!(
            check_custom("has a space in the value!!"),
            Err(KeyError::BadValue)
        );
        assert_eq!(check_custom(&"x".repeat(129)), Err(KeyError::BadValue));
        assert_eq!(
            check_custom("ünïcödé-values-are-not-ascii"),
            Err(KeyError::BadValue)
        );
    }

    #[test]
    fn expiries() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = |d, u: &str| ExpiresIn {
            duration: d,
            unit: u.into(),
        };
        assert_eq!(expiry(None, None, now), Ok(None));
        assert_eq!(
            expiry(None, Some(&e(2, "hours")), now).unwrap().as_deref(),
            Some("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            expiry(None, Some(&e(1, "months")), now).unwrap().as_deref(),
            Some("2026-01-31T00:00:00Z")
        );
        assert_eq!(
            expiry(Some("2026-06-01T00:00:00Z"), None, now)
                .unwrap()
                .as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert!(expiry(Some("2025-01-01T00:00:00Z"), None, now).is_err());
        assert!(expiry(Some("tomorrow"), None, now).is_err());
        assert!(expiry(None, Some(&e(0, "days")), now).is_err());
        assert!(expiry(None, Some(&e(1, "fortnights")), now).is_err());
        assert!(expiry(None, Some(&e(i64::MAX, "months")), now).is_err());
        assert!(expiry(Some("2026-06-01T00:00:00Z"), Some(&e(1, "days")), now).is_err());
    }
}
