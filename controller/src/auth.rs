//! Basic authentication of management requests and the roles they carry.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BasicAuthConfig;

/// A management role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// API definitions, not keys.
    Developer,
    /// API keys only.
    Consumer,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "consumer" => Some(Role::Consumer),
            _ => None,
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The configured user name.
    pub username: String,
    /// Roles granted to the user.
    pub roles: Vec<Role>,
}

impl Principal {
    /// True when the principal holds any of `allowed`.
    pub fn has_any(&self, allowed: &[Role]) -> bool {
        self.roles.iter().any(|r| allowed.contains(r))
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Basic` header.
    #[error("authentication required")]
    Missing,
    /// Unknown user or wrong password.
    #[error("invalid credentials")]
    Invalid,
}

#[derive(Debug)]
enum Secret {
    Plain([u8; 32]),
    Bcrypt(String),
    Argon2(String),
}

#[derive(Debug)]
struct User {
    username: String,
    secret: Secret,
    roles: Vec<Role>,
}

/// Checks credentials against the configured users. Hash verifications that succeeded are
/// remembered (by a digest of the credentials) so slow hashes are paid once per credential.
#[derive(Debug)]
pub struct Authenticator {
    enabled: bool,
    users: Vec<User>,
    verified: Mutex<HashMap<[u8; 32], usize>>,
}

const VERIFIED_CACHE_LIMIT: usize = 1024;

impl Authenticator {
    /// Builds the authenticator from validated configuration.
    pub fn new(cfg: &BasicAuthConfig) -> Self {
        let users = cfg
            .users
            .iter()
            .map(|u| {
                let secret = if u.password.starts_with("$2a$")
                    || u.password.starts_with("$2b$")
                    || u.password.starts_with("$2y$")
                {
                    Secret::Bcrypt(u.password.clone())
                } else if u.password.starts_with("$argon2id$") {
                    Secret::Argon2(u.password.clone())
                } else {
                    Secret::Plain(Sha256::digest(u.password.as_bytes()).into())
                };
                User {
                    username: u.username.clone(),
                    secret,
                    roles: u.roles.iter().filter_map(|r| Role::parse(r)).collect(),
                }
            })
            .collect();
        Self {
            enabled: cfg.enabled,
            users,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates an `Authorization` header value. With auth disabled (loopback only) every
    /// caller is an admin.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal {
                username: "anonymous".into(),
                roles: vec![Role::Admin],
            });
        }
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, encoded) = header.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Missing);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (name, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        let Some(idx) = self
            .users
            .iter()
            .position(|u| u.username.eq_ignore_ascii_case(name))
        else {
            self.spend_like_a_check(password);
            return Err(AuthError::Invalid);
        };
        let user = &self.users[idx];
        let ok = match &user.secret {
            Secret::Plain(digest) => {
                bool::from(Sha256::digest(password.as_bytes()).as_slice().ct_eq(digest))
            }
            Secret::Bcrypt(hash) => self.cached_or(text.as_bytes(), idx, || {
                bcrypt::verify(password, hash).unwrap_or(false)
            }),
            Secret::Argon2(hash) => self.cached_or(text.as_bytes(), idx, || {
                PasswordHash::new(hash).is_ok_and(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
            }),
        };
        if ok {
            Ok(Principal {
                username: user.username.clone(),
                roles: user.roles.clone(),
            })
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// Does the work of a password check against the first configured user's secret, so that an
    /// unknown user name takes as long to reject as a wrong password (no user enumeration).
    fn spend_like_a_check(&self, password: &str) {
        match self.users.first().map(|u| &u.secret) {
            Some(Secret::Bcrypt(hash)) => {
                let _ = bcrypt::verify(password, hash);
            }
            Some(Secret::Argon2(hash)) => {
                if let Ok(h) = PasswordHash::new(hash) {
                    let _ = Argon2::default().verify_password(password.as_bytes(), &h);
                }
            }
            Some(Secret::Plain(_)) | None => {
                let _ = Sha256::digest(password.as_bytes());
            }
        }
    }

    fn cached_or(&self, credentials: &[u8], user: usize, verify: impl FnOnce() -> bool) -> bool {
        let key: [u8; 32] = Sha256::digest(credentials).into();
        if let Ok(cache) = self.verified.lock()
            && cache.get(&key) == Some(&user)
        {
            return true;
        }
        let ok = verify();
        if ok && let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, user);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    fn auth(password: &str, roles: &[&str]) -> Authenticator {
        Authenticator::new(&BasicAuthConfig {
            enabled: true,
            users: vec![UserConfig {
                username: "Admin".into(),
                password: password.into(),
                roles: roles.iter().map(|s| s.to_string()).collect(),
            }],
        })
    }

    #[test]
    fn plaintext_passwords() {
        let a = auth("admin", &["admin"]);
        assert_eq!(
            a.authenticate(Some("Basic YWRtaW46YWRtaW4="))
                .unwrap()
                .roles,
            vec![Role::Admin]
        );
        assert_eq!(
            a.authenticate(Some(&basic("admin", "wrong"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.authenticate(Some(&basic("nobody", "admin"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(a.authenticate(None), Err(AuthError::Missing));
        assert_eq!(a.authenticate(Some("Bearer x")), Err(AuthError::Missing));
        assert_eq!(a.authenticate(Some("Basic !!!")), Err(AuthError::Invalid));
    }

    #[test]
    fn bcrypt_and_argon2_hashes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = auth(&hash, &["developer"]);
        assert!(a.authenticate(Some(&basic("admin", "s3cret"))).is_ok());
        assert!(
            a.authenticate(Some(&basic("admin", "s3cret"))).is_ok(),
            "cached path"
        );
        assert_eq!(
            a.authenticate(Some(&basic("admin", "nope"))),
            Err(AuthError::Invalid)
        );

        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = Argon2::default()
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        let a = auth(&hash, &["consumer"]);
        let p = a.authenticate(Some(&basic("admin", "pw"))).unwrap();
        assert!(p.has_any(&[Role::Consumer]) && !p.has_any(&[Role::Admin, Role::Developer]));
        assert_eq!(
            a.authenticate(Some(&basic("admin", "px"))),
            Err(AuthError::Invalid)
        );
    }
}
