//! The tamper matrix at the trust level: each threat, the exact refusal, and the trust state
//! left as it was.

use drover_wire::manifest::{AgentVersion, FileEntry, FileRole, MANIFEST_FORMAT, Manifest, RuntimeSettings};
use drover_wire::trust::{
    BundleHeader, CONTEXT_DELEGATION, CONTEXT_MANIFEST, CONTEXT_ROOT, DelegatedRole, Delegation, RootDocument,
    SignedDelegation, SignedRoot,
};
use drover_wire::{Arch, ManifestError};
use heapless::{String as HString, Vec as HVec};

use super::*;

const NOW: u64 = 1_000_000;

struct Fleet {
    root: SecretKey,
    root_doc: RootDocument,
    release: SecretKey,
}

fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

fn fleet() -> Fleet {
    let root = key(1);
    let root_doc = RootDocument { version: 1, key: root.public(), expires_at: NOW * 2, revoked: HVec::new() };
    Fleet { root, root_doc, release: key(2) }
}

fn trust(f: &Fleet) -> TrustState {
    TrustState { root: f.root_doc.clone() }
}

fn device(highest: u64) -> DeviceFacts {
    DeviceFacts {
        arch: Arch::Aarch64,
        agent: AgentVersion { major: 0, minor: 1, patch: 0 },
        now: NOW,
        highest_installed: highest,
    }
}

fn manifest(version: u64) -> Manifest {
    let mut files = HVec::new();
    let entry =
        FileEntry { role: FileRole::Model, name: HString::try_from("model.onnx").unwrap(), size: 3, sha256: [9; 32] };
    files.push(entry).unwrap();
    let mut targets = HVec::new();
    targets.push(Arch::Aarch64).unwrap();
    targets.push(Arch::Armv7).unwrap();
    Manifest {
        format: MANIFEST_FORMAT,
        name: HString::try_from("iris").unwrap(),
        version,
        label: HString::try_from("1.0.0").unwrap(),
        created_at: NOW - 10,
        expires_at: NOW + 1000,
        targets,
        min_agent: AgentVersion { major: 0, minor: 1, patch: 0 },
        inputs: HVec::new(),
        outputs: HVec::new(),
        files,
        settings: RuntimeSettings::default(),
    }
}

fn delegate(
    root: &SecretKey,
    root_version: u64,
    release: &SecretKey,
    names: &[&str],
    expires_at: u64,
) -> SignedDelegation {
    let mut n = HVec::new();
    for name in names {
        n.push(HString::try_from(*name).unwrap()).unwrap();
    }
    let delegation =
        Delegation { key: release.public(), role: DelegatedRole::Release, names: n, issued_at: NOW - 100, expires_at };
    let sig = sign_document(root, CONTEXT_DELEGATION, &delegation);
    SignedDelegation { delegation, root_version, sig }
}

fn header(f: &Fleet, m: Manifest) -> BundleHeader {
    let delegation = delegate(&f.root, 1, &f.release, &["iris"], NOW + 500);
    let manifest_sig = sign_document(&f.release, CONTEXT_MANIFEST, &m);
    BundleHeader { manifest: m, manifest_sig, delegation, roots: HVec::new() }
}

fn next_root(prev: &SecretKey, doc: RootDocument, new: &SecretKey) -> SignedRoot {
    SignedRoot {
        by_previous: sign_document(prev, CONTEXT_ROOT, &doc),
        by_self: sign_document(new, CONTEXT_ROOT, &doc),
        doc,
    }
}

fn refusal(h: &BundleHeader, t: &TrustState, d: &DeviceFacts) -> Refusal {
    let before = t.clone();
    let r = verify_header(h, t, d).expect_err("must be refused");
    assert_eq!(*t, before, "trust state untouched");
    r
}

#[test]
fn authentic_current_bundle_is_accepted() {
    let f = fleet();
    let v = verify_header(&header(&f, manifest(5)), &trust(&f), &device(4)).expect("accepted");
    assert_eq!(v.manifest.version, 5);
    assert_eq!(v.trust, trust(&f));
}

#[test]
fn arbitrary_package_signed_by_an_unknown_key_is_refused() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.manifest_sig = sign_document(&key(66), CONTEXT_MANIFEST, &h.manifest);
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::ManifestSignature { .. }));
}

#[test]
fn manifest_tampered_after_signing_is_refused() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.manifest.files[0].sha256 = [0; 32];
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::ManifestSignature { .. }));
    let mut h = header(&f, manifest(5));
    h.manifest.version = 6;
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::ManifestSignature { .. }));
}

#[test]
fn delegation_forged_by_a_non_root_key_is_refused() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.delegation = delegate(&key(66), 1, &f.release, &["iris"], NOW + 500);
    assert_eq!(refusal(&h, &trust(&f), &device(0)), Refusal::DelegationSignature { root_version: 1 });
}

#[test]
fn widened_delegation_is_refused() {
    // An attacker edits the signed delegation to cover every model.
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.delegation.delegation.names[0] = HString::try_from("*").unwrap();
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::DelegationSignature { .. }));
}

#[test]
fn operator_key_cannot_sign_bundles() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    let mut d = h.delegation.delegation.clone();
    d.role = DelegatedRole::Operator;
    h.delegation =
        SignedDelegation { sig: sign_document(&f.root, CONTEXT_DELEGATION, &d), delegation: d, root_version: 1 };
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::WrongRole { .. }));
}

#[test]
fn expired_delegation_is_refused() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.delegation = delegate(&f.root, 1, &f.release, &["iris"], NOW);
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::DelegationExpired { .. }));
}

#[test]
fn key_signing_a_model_it_is_not_delegated_for_is_refused() {
    let f = fleet();
    let mut h = header(&f, manifest(5));
    h.delegation = delegate(&f.root, 1, &f.release, &["vision-*"], NOW + 500);
    assert_eq!(
        refusal(&h, &trust(&f), &device(0)),
        Refusal::NameNotDelegated { key: hex::encode(key_id(&f.release.public()).0), name: "iris".into() }
    );
}

#[test]
fn expired_bundle_is_refused_freeze_attack() {
    let f = fleet();
    let mut m = manifest(5);
    m.expires_at = NOW;
    assert_eq!(refusal(&header(&f, m), &trust(&f), &device(0)), Refusal::BundleExpired { expires_at: NOW, now: NOW });
}

#[test]
fn rollback_to_an_equal_or_older_version_is_refused() {
    let f = fleet();
    for (version, highest) in [(5, 5), (4, 5), (1, 9)] {
        let r = refusal(&header(&f, manifest(version)), &trust(&f), &device(highest));
        assert_eq!(r, Refusal::Rollback { name: "iris".into(), version, highest });
    }
}

#[test]
fn bundle_for_another_arch_is_refused() {
    let f = fleet();
    let mut d = device(0);
    d.arch = Arch::X86_64;
    assert_eq!(
        refusal(&header(&f, manifest(5)), &trust(&f), &d),
        Refusal::WrongArch { targets: "aarch64,armv7".into(), arch: Arch::X86_64 }
    );
}

#[test]
fn bundle_for_a_newer_agent_is_refused() {
    let f = fleet();
    let mut m = manifest(5);
    m.min_agent = AgentVersion { major: 0, minor: 2, patch: 0 };
    assert!(matches!(refusal(&header(&f, m), &trust(&f), &device(0)), Refusal::AgentTooOld { .. }));
}

#[test]
fn signed_but_malformed_manifest_is_refused() {
    let f = fleet();
    let mut m = manifest(5);
    m.files[0].name = HString::try_from("..model").unwrap();
    assert_eq!(refusal(&header(&f, m), &trust(&f), &device(0)), Refusal::Manifest(ManifestError::BadFileName));
}

#[test]
fn revoked_release_key_is_refused_once_the_revocation_arrives() {
    let f = fleet();
    let mut doc = f.root_doc.clone();
    doc.version = 2;
    doc.revoked.push(key_id(&f.release.public())).unwrap();
    let mut h = header(&f, manifest(5));
    h.roots.push(next_root(&f.root, doc, &f.root)).unwrap();
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::KeyRevoked { .. }));
}

#[test]
fn root_rotation_is_followed_and_old_root_delegations_die_with_it() {
    let f = fleet();
    let new_root = key(3);
    let doc = RootDocument { version: 2, key: new_root.public(), expires_at: NOW * 3, revoked: HVec::new() };
    let rotation = next_root(&f.root, doc.clone(), &new_root);
    // A delegation re-signed by the new root, with the rotation in the bundle: accepted, and the
    // device is told to persist the new root.
    let mut h = header(&f, manifest(5));
    h.delegation = delegate(&new_root, 2, &f.release, &["iris"], NOW + 500);
    h.roots.push(rotation.clone()).unwrap();
    let v = verify_header(&h, &trust(&f), &device(0)).expect("accepted");
    assert_eq!(v.trust.root, doc);
    // A delegation from the old root after the rotation: refused.
    let mut h = header(&f, manifest(5));
    h.roots.push(rotation).unwrap();
    assert!(matches!(refusal(&h, &trust(&f), &device(0)), Refusal::DelegationSignature { .. }));
}

#[test]
fn forged_or_skipping_root_documents_are_refused() {
    let f = fleet();
    let attacker = key(66);
    let doc = RootDocument { version: 2, key: attacker.public(), expires_at: NOW * 3, revoked: HVec::new() };
    let mut h = header(&f, manifest(5));
    h.delegation = delegate(&attacker, 2, &f.release, &["iris"], NOW + 500);
    h.roots.push(next_root(&attacker, doc, &attacker)).unwrap();
    assert_eq!(refusal(&h, &trust(&f), &device(0)), Refusal::RootChain { version: 2 });

    let doc = RootDocument { version: 3, key: f.root.public(), expires_at: NOW * 3, revoked: HVec::new() };
    let mut h = header(&f, manifest(5));
    h.roots.push(next_root(&f.root, doc, &f.root)).unwrap();
    assert_eq!(refusal(&h, &trust(&f), &device(0)), Refusal::RootChain { version: 3 });

    // A rotation the new key did not countersign (no proof it holds the secret).
    let new_root = key(3);
    let doc = RootDocument { version: 2, key: new_root.public(), expires_at: NOW * 3, revoked: HVec::new() };
    let mut rotation = next_root(&f.root, doc, &new_root);
    rotation.by_self = rotation.by_previous;
    let mut h = header(&f, manifest(5));
    h.roots.push(rotation).unwrap();
    assert_eq!(refusal(&h, &trust(&f), &device(0)), Refusal::RootChain { version: 2 });
}

#[test]
fn expired_root_authorises_nothing() {
    let f = fleet();
    let mut d = device(0);
    d.now = NOW * 2;
    let mut h = header(&f, manifest(5));
    h.manifest.expires_at = NOW * 3;
    h.manifest_sig = sign_document(&f.release, CONTEXT_MANIFEST, &h.manifest);
    assert!(matches!(refusal(&h, &trust(&f), &d), Refusal::RootExpired { .. }));
}

#[test]
fn an_unsigned_bundle_is_refused_as_unsigned_not_as_a_forgery() {
    let f = fleet();
    let h = BundleHeader::unsigned(manifest(5));
    let r = refusal(&h, &trust(&f), &device(0));
    assert_eq!(r, Refusal::Unsigned);
    assert!(r.to_string().contains("drover sign"), "{r}");
}
