//! Authentication primitives: argon2id password hashes, HS256 session JWTs, and random
//! secrets (session CSRF tokens, invitation tokens, personal API tokens) of which only a
//! SHA-256 hash is stored.

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::settings::AuthSettings;

fn argon2() -> Argon2<'static> {
    // OWASP's recommended argon2id parameters (19 MiB, 2 passes).
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

/// Hashes a password with argon2id and a random salt, as a PHC string. CPU-heavy: call it
/// from `spawn_blocking`.
pub fn hash_password(password: &SecretString) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?
        .to_string())
}

/// True when `password` matches the PHC string. CPU-heavy: call it from `spawn_blocking`.
pub fn verify_password(password: &SecretString, phc: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
    Ok(argon2()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok())
}

/// `bytes` random bytes, URL-safe base64.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Hex SHA-256, the stored form of every token.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Compares two secrets in constant time.
pub fn secrets_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Prefix of personal API tokens, so that they can be recognised (and found by scanners).
pub const PERSONAL_TOKEN_PREFIX: &str = "tlrp_";

/// A new personal API token: shown once, only its hash is stored.
pub fn new_personal_token() -> String {
    format!("{PERSONAL_TOKEN_PREFIX}{}", random_secret(32))
}

/// Claims of a session JWT. The token only proves who signed in and which server-side
/// session it belongs to; the `sessions` row decides whether it is still valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: Uuid,
    /// Id of the `sessions` row.
    pub sid: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    /// Not valid before: the time of issue. Checked, so that a token minted with a future
    /// start (a clock-skewed or forged issuer) is refused until then.
    pub nbf: i64,
    pub exp: i64,
}

/// Signs and checks session JWTs: HS256 only, with `exp`, `nbf`, `iss`, `aud` and `sub`
/// required and `exp` and `nbf` checked.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
    pub ttl_minutes: i64,
}

impl JwtKeys {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret().expose_secret().as_bytes();
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            ttl_minutes: settings.session_ttl_minutes,
        }
    }

    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = SessionClaims {
            sub: user,
            sid: session,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: expires_at.timestamp(),
        };
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding)
            .context("signing a session token")
    }

    /// `None` for anything but a well-formed, unexpired HS256 token of ours.
    pub fn verify(&self, token: &str) -> Option<SessionClaims> {
        // `Validation::new(HS256)` accepts HS256 alone: `none` and every other algorithm
        // are rejected by the library before the signature is looked at.
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&AuthSettings {
            jwt_secret: Some(SecretString::from("a-test-secret-that-is-long-enough-1234")),
            ..AuthSettings::default()
        })
    }

    #[test]
    fn password_round_trip() {
        let hash = hash_password(&SecretString::from("correct horse")).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&SecretString::from("correct horse"), &hash).unwrap());
        assert!(!verify_password(&SecretString::from("wrong horse"), &hash).unwrap());
    }

    #[test]
    fn jwt_round_trip_and_expiry() {
        let keys = keys();
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let later = chrono::Utc::now() + chrono::Duration::minutes(5);
        let token = keys.issue(user, sid, later).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, sid));
        let past = chrono::Utc::now() - chrono::Duration::minutes(5);
        assert!(keys.verify(&keys.issue(user, sid, past).unwrap()).is_none());
    }

    #[test]
    fn jwt_not_yet_valid_or_without_nbf_is_refused() {
        let keys = keys();
        let token = keys
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                chrono::Utc::now() + chrono::Duration::minutes(5),
            )
            .unwrap();
        let mut claims = keys.verify(&token).unwrap();
        let secret = EncodingKey::from_secret(b"a-test-secret-that-is-long-enough-1234");
        let sign = |c: &serde_json::Value| {
            jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), c, &secret).unwrap()
        };
        let good = serde_json::to_value(&claims).unwrap();
        assert!(
            keys.verify(&sign(&good)).is_some(),
            "control: re-signed claims pass"
        );
        claims.nbf = chrono::Utc::now().timestamp() + 120;
        let future = serde_json::to_value(&claims).unwrap();
        assert!(
            keys.verify(&sign(&future)).is_none(),
            "nbf two minutes ahead"
        );
        let mut without = good.clone();
        without.as_object_mut().unwrap().remove("nbf");
        assert!(keys.verify(&sign(&without)).is_none(), "no nbf");
    }

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        assert_ne!(new_personal_token(), new_personal_token());
        assert_eq!(sha256_hex("a"), sha256_hex("a"));
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
    }
}
