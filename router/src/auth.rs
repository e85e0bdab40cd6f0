//! Credentials of the router: client API keys (stored hashed, each with a rate limit) and
//! the admin token.
//!
//! Owns checking a presented `Authorization: Bearer <secret>` against SHA-256 digests (the
//! plain secrets are read once at start and dropped) and a token bucket per key.
//!
//! Must never: keep a plain secret after start; log a secret; let a key exceed its rate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of generated secrets (characters of `[a-z0-9]`).
pub const SECRET_CHARS: usize = 40;
/// Most API keys one router holds.
pub const API_KEYS_MAX: usize = 10_000;

/// The credentials file `tessera up` writes: `{"api_key", "admin_token"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialsFile {
    pub api_key: String,
    pub admin_token: String,
}

impl CredentialsFile {
    /// Fresh random credentials.
    pub fn generate() -> CredentialsFile {
        CredentialsFile {
            api_key: format!("tk_{}", random_secret()),
            admin_token: format!("ta_{}", random_secret()),
        }
    }

    pub fn read(path: &Path) -> std::io::Result<CredentialsFile> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Writes the file readable by its owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut options = std::fs::OpenOptions::new();
        options.create(true).write(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(path)?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    }
}

fn random_secret() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..SECRET_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

type Digest32 = [u8; 32];

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// A token bucket: `rate` tokens per second, at most `burst`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Who a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Client,
    Admin,
}

/// Why a request is refused before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or an unknown one (401).
    Unauthorized,
    /// A valid credential not allowed here (403).
    Forbidden,
    /// Over the key's rate; retry after this many seconds (429).
    RateLimited { retry_after_s: u64 },
}

/// The router's credentials.
pub struct Auth {
    keys: HashMap<Digest32, Mutex<Bucket>>,
    admin: Digest32,
    /// Commands per second per API key, and the bucket's depth.
    rate: f64,
    burst: f64,
}

impl Auth {
    /// `rate_per_key`: commands per second each key may send (a batch counts its commands).
    pub fn new(api_keys: &[String], admin_token: &str, rate_per_key: u64) -> Auth {
        assert!(api_keys.len() <= API_KEYS_MAX, "too many API keys");
        assert!(rate_per_key > 0);
        let rate = rate_per_key as f64;
        let burst = (rate * 2.0).max(cells::ledger::BATCH_COMMANDS_MAX as f64);
        Auth {
            keys: api_keys
                .iter()
                .map(|key| {
                    (
                        digest(key),
                        Mutex::new(Bucket {
                            tokens: burst,
                            at: Instant::now(),
                        }),
                    )
                })
                .collect(),
            admin: digest(admin_token),
            rate,
            burst,
        }
    }

    /// Checks the `Authorization` header value for a request that costs `cost` commands.
    /// `admin_only`: the admin API (the admin token only).
    pub fn check(
        &self,
        header: Option<&str>,
        admin_only: bool,
        cost: u64,
    ) -> Result<Caller, Refusal> {
        let secret = header
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .ok_or(Refusal::Unauthorized)?;
        let presented = digest(secret);
        if presented == self.admin {
            return Ok(Caller::Admin);
        }
        let Some(bucket) = self.keys.get(&presented) else {
            return Err(Refusal::Unauthorized);
        };
        if admin_only {
            return Err(Refusal::Forbidden);
        }
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        let cost = cost.max(1) as f64;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(Caller::Client)
        } else {
            let wait = (cost - bucket.tokens) / self.rate;
            Err(Refusal::RateLimited {
                retry_after_s: wait.ceil().max(1.0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tokens_and_rates() {
        let auth = Auth::new(&["k1".into()], "admin", 10);
        assert_eq!(auth.check(None, false, 1), Err(Refusal::Unauthorized));
        assert_eq!(auth.check(Some("k1"), false, 1), Err(Refusal::Unauthorized));
        assert_eq!(
            auth.check(Some("Bearer nope"), false, 1),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(auth.check(Some("Bearer k1"), false, 1), Ok(Caller::Client));
        assert_eq!(
            auth.check(Some("Bearer k1"), true, 1),
            Err(Refusal::Forbidden)
        );
        assert_eq!(auth.check(Some("Bearer admin"), true, 1), Ok(Caller::Admin));
        // The burst is the larger of 2 s of rate and one full batch.
        assert_eq!(
            auth.check(Some("Bearer k1"), false, 8_189),
            Ok(Caller::Client)
        );
        assert!(matches!(
            auth.check(Some("Bearer k1"), false, 100),
            Err(Refusal::RateLimited { retry_after_s }) if retry_after_s >= 1
        ));
    }

    #[test]
    fn generated_credentials_differ_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        let one = CredentialsFile::generate();
        let two = CredentialsFile::generate();
        assert_ne!(one.api_key, two.api_key);
        one.write(&path).unwrap();
        let back = CredentialsFile::read(&path).unwrap();
        assert_eq!(back.api_key, one.api_key);
        assert_eq!(back.admin_token, one.admin_token);
    }
}
