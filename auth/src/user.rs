//! Users: people who log in with a name and a password. Passwords are kept
//! only as argon2id hashes (PHC strings) in `<data-dir>/auth/users.json`
//! (mode 0600). A login yields a session token, shaped like an API token,
//! which lives in memory until it expires or the server restarts.

use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// Version of `users.json`; a newer file is refused, not misread.
const FORMAT_VERSION: u32 = 1;
/// Most users kept (each change rewrites the store).
pub const MAX_USERS: usize = 10_000;
pub(crate) const MIN_PASSWORD: usize = 8;
pub(crate) const MAX_PASSWORD: usize = 1024;

/// One user as stored (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// The argon2id hash of the password, as a PHC string.
    pub password: String,
    pub role: String,
    /// The one database the user may use, if restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// When the password was last set (unix seconds).
    pub password_set_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct UserFile {
    version: u32,
    users: Vec<UserRecord>,
}

/// Checks a new user name: 1 to 64 of letters, digits, `_ . @ -`, not
/// starting with `tocsin_` (which would look like a token).
pub(crate) fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
        && !name.starts_with("tocsin_");
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "{:?} is not a user name: use 1 to 64 letters, digits, '_', '.', '@' or '-', not starting with tocsin_",
            crate::shown_user(name)
        )))
    }
}

pub(crate) fn check_password(password: &str) -> Result<(), AuthError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(AuthError::Invalid(format!("a password needs at least {MIN_PASSWORD} characters")));
    }
    if password.len() > MAX_PASSWORD {
        return Err(AuthError::Invalid(format!("a password may have at most {MAX_PASSWORD} bytes")));
    }
    Ok(())
}

/// The argon2id hash of `password` with a fresh random salt.
pub(crate) fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Random(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the stored PHC hash (slow by design: tens of
/// milliseconds).
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

pub(crate) fn load(path: &Path) -> Result<Vec<UserRecord>, AuthError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(AuthError::Io { path: path.to_path_buf(), source }),
    };
    let file: UserFile = serde_json::from_slice(&text)
        .map_err(|e| AuthError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    if file.version > FORMAT_VERSION {
        return Err(AuthError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("format version {} is newer than this server's {FORMAT_VERSION}", file.version),
        });
    }
    for u in &file.users {
        if PasswordHash::new(&u.password).is_err() {
            return Err(AuthError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("user {:?} has no valid password hash", crate::clip(&u.name)),
            });
        }
    }
    Ok(file.users)
}

pub(crate) fn save(path: &Path, users: &[UserRecord]) -> Result<(), AuthError> {
    let file = UserFile { version: FORMAT_VERSION, users: users.to_vec() };
    let text = serde_json::to_vec_pretty(&file)
        .map_err(|e| AuthError::Corrupt { path: path.to_path_buf(), reason: format!("cannot encode: {e}") })?;
    crate::token::write_private(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stored_as_salted_argon2id_hashes() {
        let a = hash_password("correct horse").expect("hash");
        let b = hash_password("correct horse").expect("hash");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(!a.contains("correct horse"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct horsf", &a));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("ops.oncall@example-1").is_ok());
        for bad in ["", "a b", "tocsin_0123456789ab_x", "é", &"x".repeat(65), "a:b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn the_user_file_is_private_and_a_bad_hash_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth").join("users.json");
        assert!(load(&path).expect("no file").is_empty());
        let rec = UserRecord {
            name: "alice".into(),
            password: hash_password("long enough").expect("hash"),
            role: "viewer".into(),
            database: None,
            created_by: "test".into(),
            created_at: 1,
            password_set_at: 1,
        };
        save(&path, std::slice::from_ref(&rec)).expect("save");
        assert_eq!(load(&path).expect("load"), vec![rec.clone()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let broken = UserRecord { password: "plain".into(), ..rec };
        save(&path, &[broken]).expect("save");
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("alice") && err.contains("users.json"), "{err}");
    }
}
