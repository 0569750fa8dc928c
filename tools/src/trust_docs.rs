//! Root documents and delegations as files: making, signing, reading and writing them.
//!
//! The root key stays offline; these are the operations an operator runs with it: start a
//! fleet's root, rotate it, revoke a release key, delegate model names to a release key.

use std::path::{Path, PathBuf};

use drover_runtime::trust::{SecretKey, key_id, sign_document, verify_document};
use drover_wire::manifest::MAX_NAME;
use drover_wire::trust::{
    CONTEXT_DELEGATION, CONTEXT_ROOT, DelegatedRole, Delegation, KeyId, MAX_PATTERNS, MAX_REVOKED, PublicKey,
    RootDocument, SignedDelegation, SignedRoot,
};
use heapless::{String as HString, Vec as HVec};

/// Why a trust document could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not the expected document.
    #[error("{path}: not a valid {what}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Root document or delegation.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The operation is not allowed (wrong key, bounds exceeded).
    #[error("{0}")]
    Refused(String),
}

/// Writes a document as pretty JSON.
pub fn save<T: serde::Serialize>(path: &Path, doc: &T) -> Result<(), DocError> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| DocError::Refused(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|error| DocError::Io { path: path.to_path_buf(), error })
}

fn load<T: serde::de::DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, DocError> {
    let text = std::fs::read_to_string(path).map_err(|error| DocError::Io { path: path.to_path_buf(), error })?;
    serde_json::from_str(&text).map_err(|e| DocError::Format { path: path.to_path_buf(), what, reason: e.to_string() })
}

/// Reads a signed root document and checks its self-signature.
pub fn load_root(path: &Path) -> Result<SignedRoot, DocError> {
    let root: SignedRoot = load(path, "root document")?;
    if !verify_document(&root.doc.key, CONTEXT_ROOT, &root.doc, &root.by_self) {
        return Err(DocError::Format { path: path.into(), what: "root document", reason: "bad self-signature".into() });
    }
    Ok(root)
}

/// Reads a signed delegation.
pub fn load_delegation(path: &Path) -> Result<SignedDelegation, DocError> {
    load(path, "delegation")
}

/// The first root document of a fleet, signed by its own key.
pub fn root_init(key: &SecretKey, expires_at: u64) -> SignedRoot {
    let doc = RootDocument { version: 1, key: key.public(), expires_at, revoked: HVec::new() };
    let sig = sign_document(key, CONTEXT_ROOT, &doc);
    SignedRoot { doc, by_previous: sig, by_self: sig }
}

/// The next root version: signed by the current root key and by the new one (the same key when
/// only revoking), revoking `revoke` in addition to what the current root revoked.
pub fn root_next(
    current: &SignedRoot,
    current_key: &SecretKey,
    new_key: &SecretKey,
    revoke: &[PublicKey],
    expires_at: u64,
) -> Result<SignedRoot, DocError> {
    if current_key.public() != current.doc.key {
        return Err(DocError::Refused(format!(
            "the key given ({}) is not the current root key ({})",
            hex::encode(key_id(&current_key.public()).0),
            hex::encode(key_id(&current.doc.key).0)
        )));
    }
    let mut revoked: HVec<KeyId, MAX_REVOKED> = current.doc.revoked.clone();
    for k in revoke {
        let id = key_id(k);
        if !revoked.contains(&id) {
            revoked.push(id).map_err(|_| DocError::Refused(format!("at most {MAX_REVOKED} revoked keys")))?;
        }
    }
    let doc = RootDocument { version: current.doc.version + 1, key: new_key.public(), expires_at, revoked };
    Ok(SignedRoot {
        by_previous: sign_document(current_key, CONTEXT_ROOT, &doc),
        by_self: sign_document(new_key, CONTEXT_ROOT, &doc),
        doc,
    })
}

/// Lets `release` sign bundles of the models matching `names` (exact, or a prefix ending in `*`),
/// or, for an operator key, commands to the devices and groups matching them.
pub fn delegate(
    root: &SignedRoot,
    root_key: &SecretKey,
    role: DelegatedRole,
    release: PublicKey,
    names: &[String],
    issued_at: u64,
    expires_at: u64,
) -> Result<SignedDelegation, DocError> {
    if root_key.public() != root.doc.key {
        return Err(DocError::Refused("the key given is not the root key of this root document".into()));
    }
    let mut patterns: HVec<HString<MAX_NAME>, MAX_PATTERNS> = HVec::new();
    for n in names {
        let body = n.strip_suffix('*').unwrap_or(n);
        let everything = n == "*";
        if !everything && !drover_wire::manifest::is_valid_name(body) {
            return Err(DocError::Refused(format!("'{n}' is not a model name or a name prefix followed by '*'")));
        }
        let s = HString::try_from(n.as_str()).map_err(|_| DocError::Refused(format!("'{n}' is too long")))?;
        patterns.push(s).map_err(|_| DocError::Refused(format!("at most {MAX_PATTERNS} names per delegation")))?;
    }
    if patterns.is_empty() {
        return Err(DocError::Refused("a delegation names at least one model".into()));
    }
    let delegation = Delegation { key: release, role, names: patterns, issued_at, expires_at };
    let sig = sign_document(root_key, CONTEXT_DELEGATION, &delegation);
    Ok(SignedDelegation { delegation, root_version: root.doc.version, sig })
}
