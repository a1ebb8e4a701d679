//! The small part of JOSE hfgate needs on both sides of the door: base64url, the JWS algorithms it
//! accepts, and signing keys (hfgate's identity assertions and the development issuer of `hfgate demo`).
//!
//! Verification lives in `authn::jwt`; this module holds what signing and verifying share.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Encodes bytes as unpadded base64url (RFC 7515 §2).
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url; padding and the standard alphabet are refused, as RFC 7515 requires.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// A JWS algorithm hfgate accepts. `none` and the HMAC family are deliberately absent: a shared
/// secret cannot prove who minted a token, and "HS256 with the public key as secret" is a classic forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The key family an algorithm needs (the JWK `kty`, and for EC the curve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyFamily::Rsa => "RSA",
            KeyFamily::EcP256 => "EC P-256",
            KeyFamily::EcP384 => "EC P-384",
            KeyFamily::Ed25519 => "OKP Ed25519",
        })
    }
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::EcP256,
            Algorithm::ES384 => KeyFamily::EcP384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    /// The aws-lc-rs verification algorithm for this JWS algorithm.
    pub(crate) fn verification(self) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature as s;
        match self {
            Algorithm::RS256 => &s::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
            Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &s::ED25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a signing key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate a {0} key")]
    Generate(&'static str),
    #[error("not a PKCS#8 {0} private key")]
    Parse(&'static str),
    #[error("signing failed")]
    Sign,
}

enum KeyPairKind {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key with its `kid` and algorithm, parsed once and used for every signature.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    pair: KeyPairKind,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("alg", &self.alg).field("kid", &self.kid).finish()
    }
}

impl SigningKey {
    /// Generates a fresh key. The `kid` is the RFC 7638 thumbprint of the public key.
    pub fn generate(alg: Algorithm) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let pair = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let ec = ec_alg(alg);
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(ec, &rng).map_err(|_| KeyError::Generate("EC"))?;
                KeyPairKind::Ec(EcdsaKeyPair::from_pkcs8(ec, pkcs8.as_ref()).map_err(|_| KeyError::Generate("EC"))?)
            }
            Algorithm::EdDSA => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate("Ed25519"))?;
                KeyPairKind::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate("Ed25519"))?)
            }
            _ => KeyPairKind::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| KeyError::Generate("RSA"))?,
            ),
        };
        Ok(SigningKey::with_pair(alg, pair, rng))
    }

    /// Loads a PKCS#8 (DER) private key for `alg`.
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                KeyPairKind::Ec(EcdsaKeyPair::from_pkcs8(ec_alg(alg), der).map_err(|_| KeyError::Parse("EC"))?)
            }
            Algorithm::EdDSA => {
                KeyPairKind::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(|_| KeyError::Parse("Ed25519"))?)
            }
            _ => KeyPairKind::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|_| KeyError::Parse("RSA"))?),
        };
        Ok(SigningKey::with_pair(alg, pair, SystemRandom::new()))
    }

    fn with_pair(alg: Algorithm, pair: KeyPairKind, rng: SystemRandom) -> SigningKey {
        let mut key = SigningKey { alg, kid: String::new(), pair, rng };
        key.kid = key.thumbprint();
        key
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Overrides the `kid` (tests use this to collide or spoof key ids).
    pub fn with_kid(mut self, kid: impl Into<String>) -> SigningKey {
        self.kid = kid.into();
        self
    }

    /// The public key as a JWK (`kty`, key parameters, `kid`, `alg`, `use`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public_members();
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), json!(self.kid));
            map.insert("alg".into(), json!(self.alg.name()));
            map.insert("use".into(), json!("sig"));
        }
        jwk
    }

    /// The required members only, in lexicographic order, as RFC 7638 hashes them.
    fn public_members(&self) -> Value {
        match &self.pair {
            KeyPairKind::Ec(pair) => {
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if self.alg == Algorithm::ES384 { "P-384" } else { "P-256" };
                json!({"crv": crv, "kty": "EC", "x": b64url(&point[1..1 + half]), "y": b64url(&point[1 + half..])})
            }
            KeyPairKind::Ed(pair) => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": b64url(pair.public_key().as_ref())})
            }
            KeyPairKind::Rsa(pair) => {
                let components = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({"e": b64url(&components.e), "kty": "RSA", "n": b64url(&components.n)})
            }
        }
    }

    fn thumbprint(&self) -> String {
        let canonical = self.public_members().to_string();
        b64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()))
    }

    /// Signs `header.claims` and returns the compact JWS. The header gets `alg` and `kid`.
    pub fn sign_jwt(&self, header: &Value, claims: &Value) -> Result<String, KeyError> {
        let mut header = header.clone();
        if let Value::Object(map) = &mut header {
            map.insert("alg".into(), json!(self.alg.name()));
            map.insert("kid".into(), json!(self.kid));
        }
        let mut token = format!("{}.{}", b64url(header.to_string()), b64url(claims.to_string()));
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64url(signature));
        Ok(token)
    }

    /// Raw JWS signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            KeyPairKind::Ec(pair) => Ok(pair.sign(&self.rng, message).map_err(|_| KeyError::Sign)?.as_ref().to_vec()),
            KeyPairKind::Ed(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            KeyPairKind::Rsa(pair) => {
                use aws_lc_rs::signature as s;
                let padding: &'static dyn s::RsaEncoding = match self.alg {
                    Algorithm::RS384 => &s::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &s::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &s::RSA_PSS_SHA256,
                    Algorithm::PS384 => &s::RSA_PSS_SHA384,
                    Algorithm::PS512 => &s::RSA_PSS_SHA512,
                    _ => &s::RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &self.rng, message, &mut signature).map_err(|_| KeyError::Sign)?;
                Ok(signature)
            }
        }
    }
}

fn ec_alg(alg: Algorithm) -> &'static aws_lc_rs::signature::EcdsaSigningAlgorithm {
    if alg == Algorithm::ES384 { &ECDSA_P384_SHA384_FIXED_SIGNING } else { &ECDSA_P256_SHA256_FIXED_SIGNING }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_rejects_padding_and_standard_alphabet() {
        assert_eq!(b64url_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert!(b64url_decode("YQ==").is_none());
        assert!(b64url_decode("a+b/").is_none());
    }

    #[test]
    fn every_algorithm_round_trips_its_name() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("HS256"), None);
        assert_eq!(Algorithm::from_name("none"), None);
    }

    #[test]
    fn generated_keys_sign_and_carry_a_thumbprint_kid() {
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256] {
            let key = SigningKey::generate(alg).expect("key");
            assert_eq!(key.kid().len(), 43, "{alg}: a SHA-256 thumbprint is 43 base64url chars");
            let token = key.sign_jwt(&json!({"typ": "JWT"}), &json!({"sub": "x"})).expect("sign");
            assert_eq!(token.split('.').count(), 3);
            assert_eq!(key.public_jwk()["alg"], alg.name());
        }
    }
}
