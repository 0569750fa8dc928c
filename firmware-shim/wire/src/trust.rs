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

/// An Ed25519 public key. Raw bytes in postcard, 64 hex digits in JSON (see `hex_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A short key identifier: the first 8 bytes of the key's SHA-256, shown to users and used in
/// revocation lists. 16 hex digits in JSON, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

/// An Ed25519 signature, kept in halves (R and s). Postcard writes its 64 bytes as they come;
/// JSON writes one string of 128 hex digits (and still reads the `{"r":[…],"s":[…]}` form
/// written before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    /// R, the first 32 bytes.
    pub r: [u8; 32],
    /// s, the last 32 bytes.
    pub s: [u8; 32],
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::hex_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        crate::hex_bytes::deserialize(d, "an Ed25519 public key").map(PublicKey)
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::hex_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        crate::hex_bytes::deserialize(d, "a key id").map(KeyId)
    }
}

/// The form a signature had in JSON before it became one hex string, and its postcard form.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Signature")]
struct Halves {
    r: [u8; 32],
    s: [u8; 32],
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&crate::hex_bytes::Hex(&self.to_bytes()))
        } else {
            Halves { r: self.r, s: self.s }.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        if !d.is_human_readable() {
            return Halves::deserialize(d).map(|h| Signature { r: h.r, s: h.s });
        }
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = Signature;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("an Ed25519 signature as 128 hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signature, E> {
                crate::hex_bytes::parse::<64>(v)
                    .map(|b| Signature::from_bytes(&b))
                    .ok_or_else(|| E::custom("an Ed25519 signature must be 128 hex digits"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Signature, A::Error> {
                let h = Halves::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Signature { r: h.r, s: h.s })
            }
        }
        d.deserialize_any(Either)
    }
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

    extern crate std;
    use std::string::ToString;

    fn sample() -> SignedDelegation {
        let mut names = Vec::new();
        let _ = names.push(String::try_from("iris").unwrap());
        let mut sig = [0u8; 64];
        sig.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8);
        SignedDelegation {
            delegation: Delegation {
                key: PublicKey([0xab; 32]),
                role: DelegatedRole::Release,
                names,
                issued_at: 1,
                expires_at: 2,
            },
            root_version: 1,
            sig: Signature::from_bytes(&sig),
        }
    }

    #[test]
    fn keys_and_signatures_are_hex_in_json_and_raw_bytes_in_postcard() {
        let d = sample();
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(&std::format!("\"key\":\"{}\"", "ab".repeat(32))), "{json}");
        let sig_hex: std::string::String = (0u8..64).map(|b| std::format!("{b:02x}")).collect();
        assert!(json.contains(&std::format!("\"sig\":\"{sig_hex}\"")), "{json}");
        let numbers = json.as_bytes().windows(2).any(|w| w[0] == b'[' && w[1].is_ascii_digit());
        assert!(!numbers, "no arrays of numbers: {json}");
        assert_eq!(serde_json::from_str::<SignedDelegation>(&json).unwrap(), d);
        // The signed, canonical bytes are what they were: 32 key bytes and 64 signature bytes
        // with no length prefix.
        let mut buf = [0u8; 256];
        let bytes = postcard::to_slice(&d, &mut buf).unwrap();
        assert!(bytes.windows(32).any(|w| w == [0xab; 32]));
        assert!(bytes.ends_with(&d.sig.to_bytes()));
        assert_eq!(postcard::from_bytes::<SignedDelegation>(bytes).unwrap(), d);
        let id = serde_json::to_string(&KeyId([1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        assert_eq!(id, "\"0102030405060708\"");
    }

    #[test]
    fn json_written_before_with_arrays_of_numbers_still_reads() {
        let d = sample();
        let key: std::vec::Vec<std::string::String> = d.delegation.key.0.iter().map(|b| b.to_string()).collect();
        let r: std::vec::Vec<std::string::String> = d.sig.r.iter().map(|b| b.to_string()).collect();
        let s: std::vec::Vec<std::string::String> = d.sig.s.iter().map(|b| b.to_string()).collect();
        let old = std::format!(
            "{{\"delegation\":{{\"key\":[{}],\"role\":\"Release\",\"names\":[\"iris\"],\"issued_at\":1,\"expires_at\":2}},\"root_version\":1,\"sig\":{{\"r\":[{}],\"s\":[{}]}}}}",
            key.join(","),
            r.join(","),
            s.join(",")
        );
        assert_eq!(serde_json::from_str::<SignedDelegation>(&old).unwrap(), d);
        // Wrong lengths are errors, not truncations.
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
        assert!(serde_json::from_str::<PublicKey>("[1,2,3]").is_err());
        assert!(serde_json::from_str::<Signature>(&std::format!("\"{}\"", "zz".repeat(64))).is_err());
    }
}
