//! The public half of a key kept in an HSM, read from the token (`CKA_EC_POINT` and
//! `CKA_EC_PARAMS`, or `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`), as a JWK; and a fingerprint
//! that changes when the key does, so that a token cache never serves a token of the old one.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde_json::{json, Value};

use super::module::describe;
use super::session::{KeySession, Location, OpenError};
use crate::config::Algorithm;

/// DER of the curve OIDs in `CKA_EC_PARAMS`: P-256, P-384, Ed25519 (and its printable-string
/// name, which older modules use).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// What the JWK set and the token cache need of an HSM key.
pub struct Public {
    pub jwk: Option<Value>,
    pub fingerprint: String,
}

/// Reads the public key (asymmetric keys) or what identifies the secret (HMAC).
pub fn read(opened: &KeySession, at: &Location, kid: &str) -> Result<Public, OpenError> {
    let _call = opened.module().call().ok_or_else(|| OpenError::Token("the module is closed".into()))?;
    let session = opened.session().ok_or_else(|| OpenError::Token("the session closed".into()))?;
    if at.algorithm.is_hmac() {
        // The secret never leaves the token: its label, id and check value stand for it.
        let attrs = session
            .get_attributes(opened.key, &[AttributeType::Id, AttributeType::CheckValue])
            .map_err(|e| OpenError::Key(describe(&e)))?;
        let mut material = format!("pkcs11\0{}\0{}", at.token_label, at.key_label).into_bytes();
        for attr in attrs {
            if let Attribute::Id(v) | Attribute::CheckValue(v) = attr {
                material.extend_from_slice(&v);
            }
        }
        return Ok(Public { jwk: None, fingerprint: fingerprint(&material) });
    }
    let public = public_object(session, at)?.unwrap_or(opened.key);
    let mut jwk = match at.algorithm {
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => ec_jwk(session, public, at)?,
        _ => rsa_jwk(session, public, at)?,
    };
    jwk["kid"] = Value::String(kid.to_owned());
    jwk["use"] = Value::String("sig".into());
    jwk["alg"] = Value::String(at.algorithm.name().into());
    let fingerprint = fingerprint(jwk.to_string().as_bytes());
    Ok(Public { jwk: Some(jwk), fingerprint })
}

fn fingerprint(material: &[u8]) -> String {
    digest::digest(&digest::SHA256, material).as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The public key object beside the private key (same label), if the token has one.
fn public_object(session: &Session, at: &Location) -> Result<Option<ObjectHandle>, OpenError> {
    let template = [Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Label(at.key_label.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(|e| OpenError::Key(describe(&e)))?;
    Ok(found.first().copied())
}

fn attributes(session: &Session, object: ObjectHandle, wanted: &[AttributeType]) -> Result<Vec<Attribute>, OpenError> {
    session.get_attributes(object, wanted).map_err(|e| OpenError::Key(describe(&e)))
}

fn ec_jwk(session: &Session, object: ObjectHandle, at: &Location) -> Result<Value, OpenError> {
    let mut params = None;
    let mut point = None;
    for attr in attributes(session, object, &[AttributeType::EcParams, AttributeType::EcPoint])? {
        match attr {
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            _ => {}
        }
    }
    let no_public =
        || OpenError::Key(format!("no public key labelled {:?} beside the private key (CKA_EC_POINT)", at.key_label));
    let (params, point) = (params.ok_or_else(no_public)?, point.ok_or_else(no_public)?);
    let (curve, coordinate) = match at.algorithm {
        Algorithm::ES256 if params == P256 => ("P-256", 32),
        Algorithm::ES384 if params == P384 => ("P-384", 48),
        Algorithm::EdDSA if params == ED25519 || params == ED25519_NAME => ("Ed25519", 32),
        alg => return Err(OpenError::Key(format!("key {:?} is on a curve {} does not use", at.key_label, alg.name()))),
    };
    let bad = || OpenError::Key(format!("key {:?} has a CKA_EC_POINT that is not a {curve} point", at.key_label));
    if curve == "Ed25519" {
        let x = octets(&point, coordinate).ok_or_else(bad)?;
        return Ok(json!({ "kty": "OKP", "crv": curve, "x": URL_SAFE_NO_PAD.encode(x) }));
    }
    let xy = octets(&point, 1 + 2 * coordinate).filter(|p| p[0] == 0x04).ok_or_else(bad)?;
    let (x, y) = xy[1..].split_at(coordinate);
    Ok(json!({ "kty": "EC", "crv": curve, "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) }))
}

/// `len` bytes: the value itself, or a DER OCTET STRING around it (what PKCS#11 specifies
/// for `CKA_EC_POINT`, though some modules give the raw point).
fn octets(value: &[u8], len: usize) -> Option<&[u8]> {
    match value {
        raw if raw.len() == len => Some(raw),
        [0x04, short, rest @ ..] if usize::from(*short) == len && rest.len() == len => Some(rest),
        [0x04, 0x81, long, rest @ ..] if usize::from(*long) == len && rest.len() == len => Some(rest),
        _ => None,
    }
}

fn rsa_jwk(session: &Session, object: ObjectHandle, at: &Location) -> Result<Value, OpenError> {
    let mut n = None;
    let mut e = None;
    for attr in attributes(session, object, &[AttributeType::Modulus, AttributeType::PublicExponent])? {
        match attr {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err(OpenError::Key(format!("no RSA public key labelled {:?} (CKA_MODULUS)", at.key_label)));
    };
    let trim = |v: &[u8]| v.iter().position(|b| *b != 0).map_or_else(Vec::new, |i| v[i..].to_vec());
    if n.len() < 256 {
        return Err(OpenError::Key(format!("key {:?} is under 2048 bits", at.key_label)));
    }
    Ok(json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(trim(&n)), "e": URL_SAFE_NO_PAD.encode(trim(&e)) }))
}
