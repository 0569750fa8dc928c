use drover_wire::trust::{KeyId, PublicKey, Signature};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The canonical bytes a signature covers: the context tag, then the postcard encoding.
///
/// postcard's encoding of a value is unique, and the verifier re-encodes what it decoded, so a
/// signature always covers exactly the document that is acted upon.
pub fn signing_bytes<T: Serialize>(context: &[u8], value: &T) -> Vec<u8> {
    let mut out = context.to_vec();
    // Encoding into a Vec cannot fail for Drover's bounded types.
    let body = postcard::to_stdvec(value).unwrap_or_default();
    out.extend_from_slice(&body);
    out
}

/// Verifies `sig` by `key` over the document's canonical bytes (strict Ed25519: no malleable
/// or small-order encodings).
pub fn verify_document<T: Serialize>(key: &PublicKey, context: &[u8], value: &T, sig: &Signature) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&key.0) else { return false };
    let sig = ed25519_dalek::Signature::from_bytes(&sig.to_bytes());
    vk.verify_strict(&signing_bytes(context, value), &sig).is_ok()
}

/// The short id users see for a key.
pub fn key_id(key: &PublicKey) -> KeyId {
    let digest = Sha256::digest(key.0);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    KeyId(id)
}

/// An Ed25519 secret key (root, release or operator). Zeroised on drop.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// From 32 secret bytes (a seed from the OS's random source, or a key file).
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(bytes))
    }

    /// The secret bytes, for writing the key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material, even in debug logs.
        write!(f, "SecretKey({})", hex::encode(key_id(&self.public()).0))
    }
}

/// Signs the document's canonical bytes.
pub fn sign_document<T: Serialize>(key: &SecretKey, context: &[u8], value: &T) -> Signature {
    Signature::from_bytes(&key.0.sign(&signing_bytes(context, value)).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::trust::{CONTEXT_DELEGATION, CONTEXT_MANIFEST};

    #[test]
    fn signatures_verify_only_for_their_key_context_and_document() {
        let k = SecretKey::from_bytes(&[7; 32]);
        let other = SecretKey::from_bytes(&[8; 32]);
        let doc = (1u64, "iris");
        let sig = sign_document(&k, CONTEXT_MANIFEST, &doc);
        assert!(verify_document(&k.public(), CONTEXT_MANIFEST, &doc, &sig));
        assert!(!verify_document(&other.public(), CONTEXT_MANIFEST, &doc, &sig));
        assert!(!verify_document(&k.public(), CONTEXT_DELEGATION, &doc, &sig));
        assert!(!verify_document(&k.public(), CONTEXT_MANIFEST, &(2u64, "iris"), &sig));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = SecretKey::from_bytes(&[0xab; 32]);
        assert!(!format!("{k:?}").contains("abab"));
    }
}
