//! The signature algorithms behind `jsonwebtoken`, on `ring`: HMAC (HS256/384/512), ECDSA
//! (ES256/384), RSA PKCS#1 v1.5 and PSS (RS*/PS*) and Ed25519 (EdDSA).
//!
//! Owns the process's `jsonwebtoken` crypto provider and installs it ([`install`]); does not
//! own keys, token checks or claims (see the parent module). `ring` is the library the TLS
//! stack (rustls) already links, so tokens need no second crypto stack: the `rust_crypto`
//! backend of `jsonwebtoken` compiled RSA, P-256, P-384 and Ed25519 a second time, and its
//! P-256 verification took about 3× `ring`'s time (`docs/benchmarks-identity.md`).
//!
//! HMAC verification compares in constant time (`ring::hmac::verify`).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use ring::{digest, hmac};

/// Installs the provider for the whole process; later calls (and a provider installed
/// first by someone else) leave the installed one in place.
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_of_private_key,
        rsa_pub_components_from_public_key: rsa_components_of_public_key,
        ec_pub_components_from_private_key: ec_components_of_private_key,
        ed_pub_components_from_private_key: ed_component_of_private_key,
        compute_digest,
    },
};

/// The key family an algorithm needs (`None`: an algorithm this provider does not know).
fn family(algorithm: Algorithm) -> Option<AlgorithmFamily> {
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Some(AlgorithmFamily::Hmac),
        Algorithm::ES256 | Algorithm::ES384 => Some(AlgorithmFamily::Ec),
        Algorithm::EdDSA => Some(AlgorithmFamily::Ed),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(AlgorithmFamily::Rsa),
        _ => None,
    }
}

/// The key's family must be the algorithm's.
fn check_family(algorithm: Algorithm, key: AlgorithmFamily) -> Result<(), Error> {
    match family(algorithm) {
        Some(wanted) if wanted == key => Ok(()),
        Some(_) => Err(ErrorKind::InvalidKeyFormat.into()),
        None => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn hmac_algorithm(algorithm: Algorithm) -> hmac::Algorithm {
    match algorithm {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

fn failed(error: impl std::fmt::Display) -> signature::Error {
    signature::Error::from_source(error.to_string())
}

// ---------------------------------------------------------------------------------------
// Verifying

struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    check_family(*algorithm, key.family())?;
    Ok(Box::new(Verifier {
        algorithm: *algorithm,
        key: key.clone(),
    }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let public: &'static dyn sig::VerificationAlgorithm = match self.algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = self.key.try_get_as_bytes().map_err(failed)?;
                let key = hmac::Key::new(hmac_algorithm(self.algorithm), secret);
                return hmac::verify(&key, message, signature).map_err(failed);
            }
            Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &sig::ED25519,
            algorithm => match rsa_parameters(algorithm) {
                Some(parameters) => parameters,
                None => return Err(failed("an algorithm this provider does not know")),
            },
        };
        match self.key.kind() {
            DecodingKeyKind::SecretOrDer(der) => sig::UnparsedPublicKey::new(public, der)
                .verify(message, signature)
                .map_err(failed),
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                let Some(parameters) = rsa_parameters(self.algorithm) else {
                    return Err(failed("an RSA key for a non-RSA algorithm"));
                };
                sig::RsaPublicKeyComponents { n, e }
                    .verify(parameters, message, signature)
                    .map_err(failed)
            }
        }
    }
}

/// RSA verification for an RS*/PS* algorithm (keys of 2,048 to 8,192 bits).
fn rsa_parameters(algorithm: Algorithm) -> Option<&'static sig::RsaParameters> {
    match algorithm {
        Algorithm::RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

// ---------------------------------------------------------------------------------------
// Signing (the dev-mode token minter, the tests and the load tool's tokens)

enum SigningKey {
    Hmac(hmac::Key),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ed25519(sig::Ed25519KeyPair),
}

struct Signer {
    algorithm: Algorithm,
    key: SigningKey,
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    check_family(*algorithm, key.family())?;
    let bytes = key.as_bytes();
    let rng = SystemRandom::new();
    let signing = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            SigningKey::Hmac(hmac::Key::new(hmac_algorithm(*algorithm), bytes))
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if *algorithm == Algorithm::ES256 {
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            SigningKey::Ecdsa(
                sig::EcdsaKeyPair::from_pkcs8(curve, bytes, &rng)
                    .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?,
            )
        }
        Algorithm::EdDSA => SigningKey::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?,
        ),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let padding: &'static dyn sig::RsaEncoding = match algorithm {
                Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                Algorithm::PS512 => &sig::RSA_PSS_SHA512,
                _ => &sig::RSA_PKCS1_SHA256,
            };
            let pair = sig::RsaKeyPair::from_der(bytes)
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(bytes))
                .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?;
            SigningKey::Rsa(pair, padding)
        }
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(Signer {
        algorithm: *algorithm,
        key: signing,
    }))
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match &self.key {
            SigningKey::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            SigningKey::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(failed),
            SigningKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            SigningKey::Rsa(pair, padding) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
        }
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

// ---------------------------------------------------------------------------------------
// Key utilities (JWK thumbprints and public parts of private keys)

fn rsa_components_of_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let pair = sig::RsaKeyPair::from_der(der)
        .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| Error::from(ErrorKind::InvalidRsaKey(e.to_string())))?;
    rsa_components_of_public_key(pair.public_key().as_ref())
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1), the
/// DER `jsonwebtoken` keeps for an RSA public key.
fn rsa_components_of_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let invalid = || {
        Error::from(ErrorKind::InvalidRsaKey(
            "not a PKCS#1 RSA public key".into(),
        ))
    };
    let (sequence, rest) = der_element(der, 0x30).ok_or_else(invalid)?;
    if !rest.is_empty() {
        return Err(invalid());
    }
    let (modulus, rest) = der_element(sequence, 0x02).ok_or_else(invalid)?;
    let (exponent, rest) = der_element(rest, 0x02).ok_or_else(invalid)?;
    if !rest.is_empty() {
        return Err(invalid());
    }
    let unsigned = |integer: &[u8]| {
        let start = integer
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(integer.len());
        integer[start..].to_vec()
    };
    Ok((unsigned(modulus), unsigned(exponent)))
}

/// One DER element with tag `tag` at the start of `input`: (its contents, what follows).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, &b| (length << 8) | usize::from(b));
        (length, rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

fn ec_components_of_private_key(
    der: &[u8],
    algorithm: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    let (signing, curve, coordinate) = match algorithm {
        Algorithm::ES256 => (
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = sig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    // An uncompressed point: 0x04, x, y.
    match pair.public_key().as_ref().split_first() {
        Some((4, point)) if point.len() == 2 * coordinate => {
            let (x, y) = point.split_at(coordinate);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_component_of_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>, Error> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, encode, Header, Validation};
    use serde_json::{json, Value};

    fn secret(bytes: &[u8]) -> (EncodingKey, DecodingKey) {
        match (
            EncodingKey::from_secret(bytes),
            DecodingKey::from_secret(bytes),
        ) {
            (Ok(encoding), Ok(decoding)) => (encoding, decoding),
            _ => panic!("an HMAC key"),
        }
    }

    fn round_trip(algorithm: Algorithm, encoding: &EncodingKey, decoding: &DecodingKey) {
        install();
        let claims = json!({"sub": "u1", "exp": 4_000_000_000u64});
        let token = match encode(&Header::new(algorithm), &claims, encoding) {
            Ok(token) => token,
            Err(e) => panic!("{algorithm:?}: signing failed: {e}"),
        };
        let validation = Validation::new(algorithm);
        match decode::<Value>(&token, decoding, &validation) {
            Ok(data) => assert_eq!(data.claims["sub"], "u1"),
            Err(e) => panic!("{algorithm:?}: verification failed: {e}"),
        }
        // One changed byte of the signature: refused.
        let mut tampered = token.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap_or_default();
        assert!(
            decode::<Value>(&tampered, decoding, &validation).is_err(),
            "{algorithm:?}: a tampered signature was accepted"
        );
    }

    #[test]
    fn hmac_signs_and_verifies_and_refuses_another_secret() {
        for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let (encoding, decoding) = secret(b"s3cret");
            round_trip(algorithm, &encoding, &decoding);
        }
        install();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": 4_000_000_000u64}),
            &secret(b"one").0,
        )
        .unwrap_or_default();
        let refused = decode::<Value>(
            &token,
            &secret(b"other").1,
            &Validation::new(Algorithm::HS256),
        );
        assert!(refused.is_err());
    }

    #[test]
    fn ecdsa_and_ed25519_keys_round_trip() {
        let rng = SystemRandom::new();
        for (algorithm, signing) in [
            (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let pkcs8 = match sig::EcdsaKeyPair::generate_pkcs8(signing, &rng) {
                Ok(doc) => doc,
                Err(e) => panic!("generate: {e}"),
            };
            let pair = match sig::EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng) {
                Ok(pair) => pair,
                Err(e) => panic!("parse: {e}"),
            };
            let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
            let decoding = DecodingKey::from_ec_der(pair.public_key().as_ref());
            round_trip(algorithm, &encoding, &decoding);
            let (curve, x, y) = match ec_components_of_private_key(pkcs8.as_ref(), algorithm) {
                Ok(parts) => parts,
                Err(e) => panic!("components: {e}"),
            };
            assert_eq!(
                curve,
                if algorithm == Algorithm::ES256 {
                    EllipticCurve::P256
                } else {
                    EllipticCurve::P384
                }
            );
            assert_eq!([&[4u8][..], &x, &y].concat(), pair.public_key().as_ref());
        }
        let pkcs8 = match sig::Ed25519KeyPair::generate_pkcs8(&rng) {
            Ok(doc) => doc,
            Err(e) => panic!("generate: {e}"),
        };
        let public = match ed_component_of_private_key(pkcs8.as_ref(), &EllipticCurve::Ed25519) {
            Ok(public) => public,
            Err(e) => panic!("public part: {e}"),
        };
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
            &DecodingKey::from_ed_der(&public),
        );
    }

    #[test]
    fn a_key_of_the_wrong_family_is_refused() {
        install();
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": 4_000_000_000u64}),
            &secret(b"k").0,
        )
        .unwrap_or_default();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.algorithms = vec![Algorithm::ES256];
        let refused = decode::<Value>(&token, &secret(b"k").1, &validation);
        assert!(refused.is_err());
    }

    #[test]
    fn pkcs1_public_key_components_are_read() {
        // SEQUENCE { INTEGER 0x00c5 (a leading zero byte), INTEGER 0x010001 }
        let der = [
            0x30, 0x09, 0x02, 0x02, 0x00, 0xc5, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        let (n, e) = match rsa_components_of_public_key(&der) {
            Ok(parts) => parts,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((n, e), (vec![0xc5], vec![0x01, 0x00, 0x01]));
        assert!(rsa_components_of_public_key(&der[..6]).is_err());
        assert!(rsa_components_of_public_key(&[0x31, 0x00]).is_err());
    }
}
