use std::fmt;

use drover_wire::Arch;
use drover_wire::manifest::{AgentVersion, Manifest, ManifestError};
use drover_wire::trust::{
    BundleHeader, CONTEXT_DELEGATION, CONTEXT_MANIFEST, CONTEXT_ROOT, DelegatedRole, KeyId, RootDocument, SignedRoot,
};
use serde::{Deserialize, Serialize};

use super::crypto::{key_id, verify_document};
use crate::rfc3339::rfc3339;

/// What a device trusts: the newest root document it has accepted. Persisted by the store; the
/// device is provisioned with the first one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustState {
    /// The current root.
    pub root: RootDocument,
}

/// Facts about the device a bundle is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// This device's architecture.
    pub arch: Arch,
    /// This agent's version.
    pub agent: AgentVersion,
    /// Now, Unix seconds (an input: the check has no clock of its own).
    pub now: u64,
    /// The highest version of this bundle's model ever installed here (0 if none); persisted
    /// by the store across reboots and slot switches.
    pub highest_installed: u64,
}

/// A bundle that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The manifest, now trusted.
    pub manifest: Manifest,
    /// The trust state to persist when the bundle carried a newer root.
    pub trust: TrustState,
}

/// Why a bundle was refused. Each threat has its own reason so that tests (and operators) can
/// tell a forged bundle from a stale one from one meant for another board.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The bundle was built but never signed (`drover bundle` without `drover sign`).
    #[error("the bundle is not signed: sign it with `drover sign` (a release key delegated by the fleet's root)")]
    Unsigned,
    /// A root document in the chain is not signed by the previous root, or skips a version.
    #[error("root document v{version} is not a valid successor of the trusted root")]
    RootChain {
        /// The offending version.
        version: u64,
    },
    /// The (possibly updated) root has expired.
    #[error("the trusted root expired at {} (now {}): provision a new root", rfc3339(*.expires_at), rfc3339(*.now))]
    RootExpired {
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The delegation is not signed by the current root.
    #[error("the release key's delegation is not signed by the trusted root (v{root_version})")]
    DelegationSignature {
        /// The root version the delegation claims.
        root_version: u64,
    },
    /// The delegation has expired.
    #[error("the delegation of release key {key} expired at {} (now {})", rfc3339(*.expires_at), rfc3339(*.now))]
    DelegationExpired {
        /// The release key id (hex).
        key: String,
        /// Expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The release key is revoked by the root.
    #[error("release key {key} is revoked")]
    KeyRevoked {
        /// The key id (hex).
        key: String,
    },
    /// The key is delegated for another role (an operator key signing a bundle, or the reverse).
    #[error("key {key} is not delegated as a {expected} key")]
    WrongRole {
        /// The key id (hex).
        key: String,
        /// The role required.
        expected: &'static str,
    },
    /// The release key may not sign this model.
    #[error("release key {key} is not delegated to sign model '{name}'")]
    NameNotDelegated {
        /// The key id (hex).
        key: String,
        /// The model name.
        name: String,
    },
    /// The manifest signature does not verify with the delegated key.
    #[error("bad manifest signature: not signed by release key {key}")]
    ManifestSignature {
        /// The key id (hex).
        key: String,
    },
    /// The manifest is inconsistent.
    #[error("malformed manifest: {0}")]
    Manifest(ManifestError),
    /// The bundle has expired.
    #[error("bundle expired at {} (now {})", rfc3339(*.expires_at), rfc3339(*.now))]
    BundleExpired {
        /// Expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// Built for other boards.
    #[error("bundle targets {targets} but this device is {arch}")]
    WrongArch {
        /// The targets, comma-separated.
        targets: String,
        /// This device.
        arch: Arch,
    },
    /// Needs a newer agent.
    #[error("bundle needs agent {needs} or newer; this agent is {have}")]
    AgentTooOld {
        /// Minimum version.
        needs: AgentVersion,
        /// This agent.
        have: AgentVersion,
    },
    /// Not newer than what was installed before (rollback attack or stale bundle).
    #[error("version {version} of '{name}' is not newer than {highest}, the highest ever installed")]
    Rollback {
        /// Model name.
        name: String,
        /// The bundle's version.
        version: u64,
        /// Highest installed.
        highest: u64,
    },
}

fn hex_id(id: KeyId) -> String {
    hex::encode(id.0)
}

/// Applies the root chain a bundle carries: each document must be the next version, signed by
/// the previous root key and by its own.
fn follow_roots(trust: &TrustState, chain: &[SignedRoot]) -> Result<TrustState, Refusal> {
    let mut current = trust.root.clone();
    for signed in chain {
        let doc = &signed.doc;
        if doc.version <= current.version {
            // Already known: a bundle may carry roots the device has; skip them.
            continue;
        }
        let valid = doc.version == current.version + 1
            && verify_document(&current.key, CONTEXT_ROOT, doc, &signed.by_previous)
            && verify_document(&doc.key, CONTEXT_ROOT, doc, &signed.by_self);
        if !valid {
            return Err(Refusal::RootChain { version: doc.version });
        }
        current = doc.clone();
    }
    Ok(TrustState { root: current })
}

/// Checks a bundle header against the device's trust and facts, in the order of the threats:
/// signed at all, root chain, delegation, signature, manifest consistency, freshness, target, anti-rollback.
pub fn verify_header(header: &BundleHeader, trust: &TrustState, device: &DeviceFacts) -> Result<Verified, Refusal> {
    if !header.is_signed() {
        return Err(Refusal::Unsigned);
    }
    let now = device.now;
    let trust = follow_roots(trust, &header.roots)?;
    let root = &trust.root;
    if now >= root.expires_at {
        return Err(Refusal::RootExpired { expires_at: root.expires_at, now });
    }

    let signed = &header.delegation;
    let delegation = &signed.delegation;
    if signed.root_version > root.version || !verify_document(&root.key, CONTEXT_DELEGATION, delegation, &signed.sig) {
        return Err(Refusal::DelegationSignature { root_version: signed.root_version });
    }
    let key = hex_id(key_id(&delegation.key));
    if root.revoked.contains(&key_id(&delegation.key)) {
        return Err(Refusal::KeyRevoked { key });
    }
    if now >= delegation.expires_at {
        return Err(Refusal::DelegationExpired { key, expires_at: delegation.expires_at, now });
    }
    if delegation.role != DelegatedRole::Release {
        return Err(Refusal::WrongRole { key, expected: "release" });
    }

    let manifest = &header.manifest;
    if !verify_document(&delegation.key, CONTEXT_MANIFEST, manifest, &header.manifest_sig) {
        return Err(Refusal::ManifestSignature { key });
    }
    if !delegation.covers(&manifest.name) {
        return Err(Refusal::NameNotDelegated { key, name: manifest.name.to_string() });
    }
    manifest.validate().map_err(Refusal::Manifest)?;
    if now >= manifest.expires_at {
        return Err(Refusal::BundleExpired { expires_at: manifest.expires_at, now });
    }
    if !manifest.targets.contains(&device.arch) {
        let targets = manifest.targets.iter().map(|a| a.name()).collect::<Vec<_>>().join(",");
        return Err(Refusal::WrongArch { targets, arch: device.arch });
    }
    if manifest.min_agent > device.agent {
        return Err(Refusal::AgentTooOld { needs: manifest.min_agent, have: device.agent });
    }
    if manifest.version <= device.highest_installed {
        return Err(Refusal::Rollback {
            name: manifest.name.to_string(),
            version: manifest.version,
            highest: device.highest_installed,
        });
    }
    Ok(Verified { manifest: manifest.clone(), trust })
}

impl fmt::Display for TrustState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "root v{} key {} (expires {})",
            self.root.version,
            hex_id(key_id(&self.root.key)),
            rfc3339(self.root.expires_at)
        )
    }
}
