//! Ed25519 signature verification under the ZIP 215 rules, one signature at a
//! time or a whole batch at once, for MedLedger's event envelopes
//! (docs/architecture.md, Event signing). The cryptography is the
//! ed25519-consensus crate's; this module only moves bytes across.
//!
//! Why ZIP 215: under it a batch verifies exactly when every signature in it
//! verifies on its own, so the ledger can check a fetch of events with one
//! multi-scalar multiplication (several times cheaper per signature, more so
//! when few producer keys signed the batch) without ever admitting an event
//! that a single verification would refuse. Signatures made by any RFC 8032
//! signer verify under both ZIP 215 and libsodium's stricter rules.
//!
//! Both functions release the GIL while they compute, so Python threads verify
//! in parallel.

use ed25519_consensus::{batch, Signature, VerificationKey, VerificationKeyBytes};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A key and signature of the right lengths, else None (a malformed signature
/// never verifies; it is not an error).
fn parse(key: &[u8], signature: &[u8]) -> Option<(VerificationKeyBytes, Signature)> {
    let key: [u8; 32] = key.try_into().ok()?;
    let signature: [u8; 64] = signature.try_into().ok()?;
    Some((VerificationKeyBytes::from(key), Signature::from(signature)))
}

/// True iff `signature` (64 bytes) is a valid ZIP 215 signature of `message`
/// by the raw 32-byte Ed25519 public key `key`.
#[pyfunction]
fn verify(py: Python<'_>, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Some((key, signature)) = parse(key, signature) else {
        return false;
    };
    let message = message.to_vec();
    py.allow_threads(move || {
        VerificationKey::try_from(key)
            .map(|key| key.verify(&signature, &message).is_ok())
            .unwrap_or(false)
    })
}

/// True iff every `signatures[i]` is a valid ZIP 215 signature of
/// `messages[i]` by `keys[i]`; False if any one is not (the caller then
/// verifies them one by one to learn which). An empty batch is True.
#[pyfunction]
fn verify_batch(
    py: Python<'_>,
    keys: Vec<Bound<'_, PyBytes>>,
    messages: Vec<Bound<'_, PyBytes>>,
    signatures: Vec<Bound<'_, PyBytes>>,
) -> PyResult<bool> {
    if keys.len() != messages.len() || keys.len() != signatures.len() {
        return Err(PyValueError::new_err(
            "keys, messages and signatures must be lists of the same length",
        ));
    }
    let mut items = Vec::with_capacity(keys.len());
    for ((key, message), signature) in keys.iter().zip(&messages).zip(&signatures) {
        let Some((key, signature)) = parse(key.as_bytes(), signature.as_bytes()) else {
            return Ok(false);
        };
        items.push((key, signature, message.as_bytes().to_vec()));
    }
    Ok(py.allow_threads(move || {
        let mut verifier = batch::Verifier::new();
        for (key, signature, message) in &items {
            verifier.queue((*key, *signature, &message[..]));
        }
        verifier.verify(rand::thread_rng()).is_ok()
    }))
}

#[pymodule]
fn medledger_ed25519(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(verify, module)?)?;
    module.add_function(wrap_pyfunction!(verify_batch, module)?)?;
    Ok(())
}
