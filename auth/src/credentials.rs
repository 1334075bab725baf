//! What a client presents, however its protocol carries it: an
//! `Authorization` header (`Bearer`, InfluxDB's `Token`, `Basic`), gRPC
//! metadata of the same name, or InfluxDB v1's `u`/`p` parameters.

use base64::Engine as _;

use crate::AuthError;

const BASIC_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing presented.
    None,
    /// A bearer token (`Bearer`, `Token`).
    Token(String),
    /// A user name and password (`Basic`, v1 `u`/`p`); the password may be
    /// a token, as Prometheus and InfluxDB v1 clients send it.
    Basic { user: String, password: String },
}

/// Never prints secrets.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, ..)"),
        }
    }
}

impl Credentials {
    /// Whether checking these means a password hash (slow: run it off the
    /// async workers): a user name with a password that is not a token.
    pub fn is_password(&self) -> bool {
        match self {
            Credentials::Basic { user, password } => {
                crate::token::token_id(password).is_none()
                    && !(password.is_empty() && crate::token::token_id(user).is_some())
            }
            _ => false,
        }
    }

    /// Parses an `Authorization` header value.
    pub fn from_authorization(value: &str) -> Result<Credentials, AuthError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
            if rest.is_empty() {
                return Err(AuthError::Unauthenticated(format!("the {scheme} authorization has no token")));
            }
            return Ok(Credentials::Token(rest.to_string()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            // With or without `=` padding: the Arrow Flight Go client (the
            // ADBC driver) sends it without.
            let decoded =
                BASIC_BASE64.decode(rest).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
                    AuthError::Unauthenticated("the Basic authorization is not base64 of UTF-8".into())
                })?;
            let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
            return Ok(Credentials::Basic { user: user.to_string(), password: password.to_string() });
        }
        // Only a word that looks like a scheme is named: a bare token (a
        // client that left out `Bearer `) must not reach the answer or the
        // audit log.
        let looks_like_scheme = scheme.len() <= 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
        let named = if looks_like_scheme { format!("scheme {scheme:?}") } else { "value (not shown)".to_string() };
        Err(AuthError::Unauthenticated(format!(
            "unsupported authorization {named}: use Bearer <token>, Token <token> or Basic"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_clients_use_is_understood() {
        assert_eq!(Credentials::from_authorization("Bearer abc").ok(), Some(Credentials::Token("abc".into())));
        assert_eq!(Credentials::from_authorization("Token abc").ok(), Some(Credentials::Token("abc".into())));
        assert_eq!(Credentials::from_authorization("bearer  abc ").ok(), Some(Credentials::Token("abc".into())));
        // "prom:secret"
        assert_eq!(
            Credentials::from_authorization("Basic cHJvbTpzZWNyZXQ=").ok(),
            Some(Credentials::Basic { user: "prom".into(), password: "secret".into() })
        );
        // "ann:ann's long password", as the ADBC driver sends it (no padding).
        let unpadded = Credentials::Basic { user: "ann".into(), password: "ann's long password".into() };
        assert_eq!(
            Credentials::from_authorization("Basic YW5uOmFubidzIGxvbmcgcGFzc3dvcmQ").ok(),
            Some(unpadded.clone())
        );
        assert_eq!(Credentials::from_authorization("Basic YW5uOmFubidzIGxvbmcgcGFzc3dvcmQ=").ok(), Some(unpadded));
        assert!(Credentials::from_authorization("Bearer").is_err());
        assert!(Credentials::from_authorization("Basic !!!").is_err());
        assert!(Credentials::from_authorization("Digest x").unwrap_err().to_string().contains("Digest"));
        assert_eq!(Credentials::from_authorization("Bearer\tabc").ok(), Some(Credentials::Token("abc".into())));
    }

    /// A token sent without its scheme (or glued to it) is never echoed:
    /// the error goes to the client and into the audit log.
    #[test]
    fn a_token_without_a_scheme_is_not_repeated_in_the_error() {
        for value in ["tocsin_0a1b2c_SECRETsecret", "BearerSECRETsecret", "SECRETsecretSECRETsecret", "x SECRETsecret"]
        {
            let e = Credentials::from_authorization(value).unwrap_err().to_string();
            assert!(!e.contains("SECRETsecret"), "{value}: {e}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credentials::Basic { user: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Token("s3cret".into())).contains("s3cret"));
    }
}
