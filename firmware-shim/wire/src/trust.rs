//! The signed documents of Drover's chain of trust (TUF-style, offline root).
//!
//! An offline root key signs [`RootDocument`]s (rotation and revocation) and [`Delegation`]s
//! that let a release key sign bundles for named models. Every signature covers a context tag
//! followed by the canonical postcard bytes of the document, so a signature made for one kind
//! of document can never be replayed as another.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::manifest::{MAX_NAME, Manifest};

/// Context tag of root documents.
pub const CONTEXT_ROOT: &[u8] = b"drover/root/v1\0";
/// Context tag of delegations.
pub const CONTEXT_DELEGATION: &[u8] = b"drover/delegation/v1\0";
/// Context tag of bundle manifests.
pub const CONTEXT_MANIFEST: &[u8] = b"drover/manifest/v1\0";
/// Most release keys a root document can revoke.
pub const MAX_REVOKED: usize = 32;
/// Most model-name patterns in one delegation.
pub const MAX_PATTERNS: usize = 8;
/// Most root documents a bundle carries to bring a device's root up to date.
pub const MAX_ROOT_CHAIN: usize = 4;

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// A short key identifier: the first 8 bytes of the key's SHA-256, shown to users and used in
/// revocation lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

/// An Ed25519 signature, split in halves because serde arrays stop at 32 elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// R, the first 32 bytes.
    pub r: [u8; 32],
    /// s, the last 32 bytes.
    pub s: [u8; 32],
}

impl Signature {
    /// From the 64-byte form the signature libraries use.
    pub fn from_bytes(b: &[u8; 64]) -> Signature {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&b[..32]);
        s.copy_from_slice(&b[32..]);
        Signature { r, s }
    }

    /// The 64-byte form.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.r);
        b[32..].copy_from_slice(&self.s);
        b
    }
}

/// The fleet's root of trust at one version: the root key, until when it is valid, and the
/// release keys it has revoked. Version n+1 must be signed by the root key of version n (and by
/// its own key), which is how a device follows a rotation and learns of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RootDocument {
    /// Strictly increasing from 1.
    pub version: u64,
    /// The root public key of this version.
    pub key: PublicKey,
    /// Unix seconds after which this root no longer authorises anything.
    pub expires_at: u64,
    /// Revoked release keys.
    pub revoked: Vec<KeyId, MAX_REVOKED>,
}

/// A root document with its signatures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRoot {
    /// The document.
    pub doc: RootDocument,
    /// By the previous version's root key (by its own key for version 1).
    pub by_previous: Signature,
    /// By the document's own key: proves the new root holder has the secret.
    pub by_self: Signature,
}

/// What a delegated key may do: a release key signs bundles, an operator key signs commands.
/// A key delegated for one can never act as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DelegatedRole {
    /// Signs bundles of the models named in the delegation.
    Release,
    /// Signs commands to the devices or groups named in the delegation.
    Operator,
}

/// The root's permission for a key to sign bundles of some models (release) or commands to some
/// devices and groups (operator), for a while.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Delegation {
    /// The delegated key.
    pub key: PublicKey,
    /// What it may sign.
    pub role: DelegatedRole,
    /// Model names (release) or device/group names (operator) it covers: exact names, or a
    /// prefix ending in `*`.
    pub names: Vec<String<MAX_NAME>, MAX_PATTERNS>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds after which the delegation is void.
    pub expires_at: u64,
}

impl Delegation {
    /// Whether this delegation covers `name` (a model, or a device or group).
    pub fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p.as_str() == name,
        })
    }
}

/// A delegation with the root's signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedDelegation {
    /// The delegation.
    pub delegation: Delegation,
    /// Version of the root that signed it.
    pub root_version: u64,
    /// The root key's signature.
    pub sig: Signature,
}

/// The header of a bundle container: everything a device needs to decide, before reading a
/// byte of the payload, whether the bundle is authentic, current and meant for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BundleHeader {
    /// What the bundle holds.
    pub manifest: Manifest,
    /// The release key's signature over the manifest.
    pub manifest_sig: Signature,
    /// The release key's delegation from the root.
    pub delegation: SignedDelegation,
    /// Root documents newer than the device may know, oldest first.
    pub roots: Vec<SignedRoot, MAX_ROOT_CHAIN>,
}

impl BundleHeader {
    /// A header with no signature yet (all-zero key and signatures), as `drover bundle` writes
    /// before `drover sign`. Devices refuse it: the zero delegation is not signed by any root.
    pub fn unsigned(manifest: Manifest) -> BundleHeader {
        let zero = Signature { r: [0; 32], s: [0; 32] };
        let delegation = Delegation {
            key: PublicKey([0; 32]),
            role: DelegatedRole::Release,
            names: Vec::new(),
            issued_at: 0,
            expires_at: 0,
        };
        BundleHeader {
            manifest,
            manifest_sig: zero,
            delegation: SignedDelegation { delegation, root_version: 0, sig: zero },
            roots: Vec::new(),
        }
    }

    /// Whether a release key has signed it (see [`BundleHeader::unsigned`]).
    pub fn is_signed(&self) -> bool {
        self.delegation.delegation.key != PublicKey([0; 32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegation_patterns_match_exact_names_and_prefixes() {
        let mut names = Vec::new();
        let _ = names.push(String::try_from("iris").unwrap());
        let _ = names.push(String::try_from("vision-*").unwrap());
        let d =
            Delegation { key: PublicKey([0; 32]), role: DelegatedRole::Release, names, issued_at: 0, expires_at: 1 };
        assert!(d.covers("iris"));
        assert!(d.covers("vision-cnn"));
        assert!(!d.covers("iris2"));
        assert!(!d.covers("visio"));
    }

    #[test]
    fn signature_halves_round_trip() {
        let mut b = [0u8; 64];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        assert_eq!(Signature::from_bytes(&b).to_bytes(), b);
    }
}
