//! API tokens: random, shown once, stored only as a SHA-256 hash in
//! `<data-dir>/auth/tokens.json` (mode 0600). A token is
//! `tocsin_<id>_<secret>`: the id (public, shown by `token list`) finds the
//! record, the hash of the whole token proves it. Tokens carry 192 bits of
//! randomness, so a fast hash is enough (a slow one is for passwords).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AuthError;

const PREFIX: &str = "tocsin_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 24;
/// Version of `tokens.json`; a newer file is refused, not misread.
const FORMAT_VERSION: u32 = 1;

/// One token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub role: String,
    /// The one database the token may use, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub description: String,
    /// Who created it (a token id, a user, or `bootstrap`).
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl TokenRecord {
    pub fn is_active(&self, now_secs: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now_secs < e)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// A new token's secret, its id and the hash to store.
pub(crate) struct NewToken {
    pub(crate) token: String,
    pub(crate) id: String,
    pub(crate) sha256: String,
}

pub(crate) fn generate() -> Result<NewToken, AuthError> {
    let mut bytes = [0u8; ID_BYTES + SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    let id = hex(&bytes[..ID_BYTES]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[ID_BYTES..]);
    let token = format!("{PREFIX}{id}_{secret}");
    let sha256 = hex(&Sha256::digest(token.as_bytes()));
    Ok(NewToken { token, id, sha256 })
}

/// The id of something shaped like a token, else `None` (so a password is
/// never mistaken for one).
pub(crate) fn token_id(candidate: &str) -> Option<&str> {
    let rest = candidate.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_BYTES * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some(id)
}

/// Whether `token` hashes to `sha256_hex`, in time independent of where
/// they differ.
pub(crate) fn matches(token: &str, sha256_hex: &str) -> bool {
    let actual = hex(&Sha256::digest(token.as_bytes()));
    actual.len() == sha256_hex.len()
        && actual.bytes().zip(sha256_hex.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn load(path: &Path) -> Result<Option<Vec<TokenRecord>>, AuthError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AuthError::Io { path: path.to_path_buf(), source }),
    };
    let file: TokenFile = serde_json::from_slice(&text)
        .map_err(|e| AuthError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    if file.version > FORMAT_VERSION {
        return Err(AuthError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("format version {} is newer than this server's {FORMAT_VERSION}", file.version),
        });
    }
    Ok(Some(file.tokens))
}

pub(crate) fn save(path: &Path, tokens: &[TokenRecord]) -> Result<(), AuthError> {
    let file = TokenFile { version: FORMAT_VERSION, tokens: tokens.to_vec() };
    let text = serde_json::to_vec_pretty(&file)
        .map_err(|e| AuthError::Corrupt { path: path.to_path_buf(), reason: format!("cannot encode: {e}") })?;
    write_private(path, &text)
}

/// Writes a file only its owner can read, atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let io = |source| AuthError::Io { path: PathBuf::from(path), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    tocsin_storage::durable::write_atomic(path, io, |file| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        std::io::Write::write_all(file, bytes).map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_recognised_and_verified_by_hash() {
        let t = generate().expect("random");
        assert_eq!(token_id(&t.token), Some(t.id.as_str()));
        assert!(matches(&t.token, &t.sha256));
        assert!(!matches(&format!("{}x", t.token), &t.sha256));
        let other = generate().expect("random");
        assert_ne!(t.token, other.token);
        assert!(!matches(&other.token, &t.sha256));
    }

    #[test]
    fn passwords_are_not_taken_for_tokens() {
        assert_eq!(token_id("hunter2"), None);
        assert_eq!(token_id("tocsin_nothex!!!!!!_x"), None);
        assert_eq!(token_id("tocsin_0123456789ab_"), None);
        assert_eq!(token_id("tocsin_0123456789ab_s"), Some("0123456789ab"));
    }

    #[test]
    fn the_token_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth").join("tokens.json");
        let t = generate().expect("random");
        let rec = TokenRecord {
            id: t.id,
            sha256: t.sha256,
            role: "admin".into(),
            database: None,
            description: String::new(),
            created_by: "test".into(),
            created_at: 1,
            expires_at: None,
            revoked_at: None,
        };
        save(&path, std::slice::from_ref(&rec)).expect("save");
        assert_eq!(load(&path).expect("load"), Some(vec![rec]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!std::fs::read_to_string(&path).expect("read").contains(&t.token));
    }
}
