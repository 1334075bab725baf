//! Message authentication: HMAC-SHA-256 (RFC 2104) under a server key, for
//! values the server hands out and must recognise as its own when they come
//! back (Flight SQL statement tickets, links in notifications).

use sha2::{Digest as _, Sha256};

use crate::AuthError;

const BLOCK: usize = 64;

/// HMAC-SHA-256 of the parts of `message` (concatenated) under `key`.
pub fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// 32 random bytes from the operating system: a new key.
pub fn random_key() -> Result<[u8; 32], AuthError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(key)
}

/// Equal, in a time that does not depend on where the first difference is.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Signs and checks values with one key.
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// A key drawn from the operating system: what it signs is recognised
    /// until the process ends.
    pub fn random() -> Result<Self, AuthError> {
        Ok(Self { key: random_key()? })
    }

    /// A signer with a key kept elsewhere (in a file, so that what it signed
    /// outlives a restart).
    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The tag of `message` (its parts concatenated).
    pub fn tag(&self, message: &[&[u8]]) -> [u8; 32] {
        hmac_sha256(&self.key, message)
    }

    /// `body` preceded by its 32-byte tag.
    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let mut out = hmac_sha256(&self.key, &[body]).to_vec();
        out.extend_from_slice(body);
        out
    }

    /// The body of a value [`Self::seal`]ed with this key; `None` for
    /// anything else (tampered, cut, sealed by another process).
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let (tag, body) = sealed.split_at_checked(32)?;
        same_bytes(tag, &hmac_sha256(&self.key, &[body])).then_some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn rfc_4231_vectors() {
        // Test case 1: a short key.
        let tag = hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
        assert_eq!(hex(&tag), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        // Test case 2, the message given in two parts.
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&tag), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block is hashed first.
        let tag = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex(&tag), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn sealed_values_open_only_untouched_and_under_their_key() {
        let (a, b) = (Signer::random().expect("key"), Signer::random().expect("key"));
        let sealed = a.seal(b"{\"sql\":\"SELECT 1\"}");
        assert_eq!(a.open(&sealed), Some(&b"{\"sql\":\"SELECT 1\"}"[..]));
        assert_eq!(b.open(&sealed), None, "another key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().expect("body") ^= 1;
        assert_eq!(a.open(&tampered), None, "a changed body");
        let mut tag = sealed.clone();
        tag[0] ^= 1;
        assert_eq!(a.open(&tag), None, "a changed tag");
        assert_eq!(a.open(&sealed[..20]), None, "cut short");
        assert_eq!(a.open(b"{\"sql\":\"SELECT 1\"}"), None, "never sealed");
    }
}
