use drover_wire::command::{CONTEXT_COMMAND, Command, SignedCommand, Target};
use drover_wire::trust::{CONTEXT_DELEGATION, DelegatedRole};

use super::crypto::{key_id, verify_document};
use super::verify::TrustState;
use crate::rfc3339::rfc3339;

/// Who this device is, for matching a command's target, and its replay floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFacts<'a> {
    /// This device's id.
    pub device: &'a str,
    /// The groups it belongs to.
    pub groups: &'a [String],
    /// Now, Unix seconds.
    pub now: u64,
    /// The highest command sequence this device applied (persisted).
    pub last_sequence: u64,
}

/// Why a command was refused; the device does nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    /// The device's root of trust expired: it takes no orders until a new root reaches it (an
    /// install carrying one), as it takes no bundles.
    #[error("the trust root expired at {} (now {})", rfc3339(*.expires_at), rfc3339(*.now))]
    RootExpired {
        /// The root's expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// The operator key's delegation is not signed by the trusted root.
    #[error("the operator key's delegation is not signed by the trusted root")]
    DelegationSignature,
    /// The operator key is revoked.
    #[error("operator key {0} is revoked")]
    KeyRevoked(String),
    /// The delegation expired.
    #[error("the operator key's delegation expired")]
    DelegationExpired,
    /// A release key signed a command.
    #[error("key {0} is not delegated as an operator key")]
    WrongRole(String),
    /// The command signature does not verify.
    #[error("bad command signature")]
    Signature,
    /// The operator may not command this target.
    #[error("operator key {key} may not command '{target}'")]
    NotDelegated {
        /// The key id (hex).
        key: String,
        /// The target name.
        target: String,
    },
    /// The command is for another device or a group this device is not in.
    #[error("command for '{0}', not for this device")]
    NotForThisDevice(String),
    /// The command expired.
    #[error("command expired at {} (now {})", rfc3339(*.expires_at), rfc3339(*.now))]
    Expired {
        /// Expiry.
        expires_at: u64,
        /// Now.
        now: u64,
    },
    /// Already applied, or older than one applied: a replay.
    #[error("replayed command: sequence {sequence} is not above {last}, the last applied")]
    Replayed {
        /// The command's sequence.
        sequence: u64,
        /// The last applied.
        last: u64,
    },
}

/// Checks a signed command against the trust root, this device and its replay floor.
pub fn verify_command(
    signed: &SignedCommand,
    trust: &TrustState,
    facts: &CommandFacts<'_>,
) -> Result<Command, CommandRefusal> {
    let root = &trust.root;
    if facts.now >= root.expires_at {
        return Err(CommandRefusal::RootExpired { expires_at: root.expires_at, now: facts.now });
    }
    let d = &signed.delegation.delegation;
    // A delegation naming a root newer than the device's cannot be one its root signed.
    if signed.delegation.root_version > root.version
        || !verify_document(&root.key, CONTEXT_DELEGATION, d, &signed.delegation.sig)
    {
        return Err(CommandRefusal::DelegationSignature);
    }
    let key = hex::encode(key_id(&d.key).0);
    if root.revoked.contains(&key_id(&d.key)) {
        return Err(CommandRefusal::KeyRevoked(key));
    }
    if facts.now >= d.expires_at {
        return Err(CommandRefusal::DelegationExpired);
    }
    if d.role != DelegatedRole::Operator {
        return Err(CommandRefusal::WrongRole(key));
    }
    let c = &signed.command;
    if !verify_document(&d.key, CONTEXT_COMMAND, c, &signed.sig) {
        return Err(CommandRefusal::Signature);
    }
    if !d.covers(c.target.name()) {
        return Err(CommandRefusal::NotDelegated { key, target: c.target.name().to_string() });
    }
    let mine = match &c.target {
        Target::Device(id) => id.as_str() == facts.device,
        Target::Group(g) => facts.groups.iter().any(|mine| mine == g.as_str()),
    };
    if !mine {
        return Err(CommandRefusal::NotForThisDevice(c.target.name().to_string()));
    }
    if facts.now >= c.expires_at {
        return Err(CommandRefusal::Expired { expires_at: c.expires_at, now: facts.now });
    }
    if c.sequence <= facts.last_sequence {
        return Err(CommandRefusal::Replayed { sequence: c.sequence, last: facts.last_sequence });
    }
    Ok(c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{SecretKey, sign_document};
    use drover_wire::command::Operation;
    use drover_wire::trust::{Delegation, RootDocument, SignedDelegation};
    use heapless::{String as HString, Vec as HVec};

    const NOW: u64 = 10_000;

    fn setup(role: DelegatedRole, names: &[&str]) -> (TrustState, SecretKey, SignedDelegation) {
        let root = SecretKey::from_bytes(&[1; 32]);
        let op = SecretKey::from_bytes(&[4; 32]);
        let trust = TrustState {
            root: RootDocument { version: 1, key: root.public(), expires_at: NOW * 2, revoked: HVec::new() },
        };
        let mut n = HVec::new();
        for name in names {
            n.push(HString::try_from(*name).unwrap()).unwrap();
        }
        let d = Delegation { key: op.public(), role, names: n, issued_at: 0, expires_at: NOW + 100 };
        let sig = sign_document(&root, CONTEXT_DELEGATION, &d);
        (trust, op, SignedDelegation { delegation: d, root_version: 1, sig })
    }

    fn command(target: Target, sequence: u64) -> Command {
        Command { target, sequence, issued_at: NOW, expires_at: NOW + 60, op: Operation::Rollback }
    }

    fn signed(op: &SecretKey, d: &SignedDelegation, c: Command) -> SignedCommand {
        SignedCommand { sig: sign_document(op, CONTEXT_COMMAND, &c), command: c, delegation: d.clone() }
    }

    fn dev(id: &str) -> Target {
        Target::Device(HString::try_from(id).unwrap())
    }

    fn facts<'a>(groups: &'a [String], last: u64) -> CommandFacts<'a> {
        CommandFacts { device: "pi-7", groups, now: NOW, last_sequence: last }
    }

    #[test]
    fn a_command_for_this_device_or_its_group_is_accepted_once() {
        let (trust, op, d) = setup(DelegatedRole::Operator, &["pi-*", "lab"]);
        let groups = vec!["lab".to_string()];
        let c = signed(&op, &d, command(dev("pi-7"), 5));
        assert_eq!(verify_command(&c, &trust, &facts(&groups, 4)).unwrap(), c.command);
        assert_eq!(
            verify_command(&c, &trust, &facts(&groups, 5)),
            Err(CommandRefusal::Replayed { sequence: 5, last: 5 })
        );
        let g = signed(&op, &d, command(Target::Group(HString::try_from("lab").unwrap()), 6));
        assert!(verify_command(&g, &trust, &facts(&groups, 5)).is_ok());
    }

    #[test]
    fn commands_are_bound_to_their_target() {
        let (trust, op, d) = setup(DelegatedRole::Operator, &["*"]);
        let c = signed(&op, &d, command(dev("pi-8"), 5));
        assert_eq!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::NotForThisDevice("pi-8".into())));
        // Re-targeting a captured command breaks its signature.
        let mut moved = c.clone();
        moved.command.target = dev("pi-7");
        assert_eq!(verify_command(&moved, &trust, &facts(&[], 0)), Err(CommandRefusal::Signature));
    }

    #[test]
    fn operators_are_limited_to_their_delegated_targets_and_role() {
        let (trust, op, d) = setup(DelegatedRole::Operator, &["lab-*"]);
        let c = signed(&op, &d, command(dev("pi-7"), 5));
        assert!(matches!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::NotDelegated { .. })));
        let (trust, op, d) = setup(DelegatedRole::Release, &["*"]);
        let c = signed(&op, &d, command(dev("pi-7"), 5));
        assert!(matches!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::WrongRole(_))));
    }

    #[test]
    fn expired_commands_and_forged_delegations_are_refused() {
        let (trust, op, d) = setup(DelegatedRole::Operator, &["*"]);
        let mut late = command(dev("pi-7"), 5);
        late.expires_at = NOW;
        let c = signed(&op, &d, late);
        assert!(matches!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::Expired { .. })));
        let rogue = SecretKey::from_bytes(&[9; 32]);
        let mut forged = d.clone();
        forged.sig = sign_document(&rogue, CONTEXT_DELEGATION, &forged.delegation);
        let c = signed(&op, &forged, command(dev("pi-7"), 5));
        assert_eq!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::DelegationSignature));
        let mut future_root = d.clone();
        future_root.root_version = 2;
        let c = signed(&op, &future_root, command(dev("pi-7"), 5));
        assert_eq!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::DelegationSignature));
    }

    #[test]
    fn revoked_keys_expired_delegations_and_an_expired_root_give_no_orders() {
        let (mut trust, op, d) = setup(DelegatedRole::Operator, &["*"]);
        let c = signed(&op, &d, command(dev("pi-7"), 5));
        assert!(verify_command(&c, &trust, &facts(&[], 0)).is_ok());
        // The delegation's last second, then past it (clock moved forward).
        let at = |now| CommandFacts { now, ..facts(&[], 0) };
        assert_eq!(verify_command(&c, &trust, &at(NOW + 100)), Err(CommandRefusal::DelegationExpired));
        // The root's own expiry comes first.
        assert_eq!(
            verify_command(&c, &trust, &at(NOW * 2)),
            Err(CommandRefusal::RootExpired { expires_at: NOW * 2, now: NOW * 2 })
        );
        trust.root.revoked.push(key_id(&op.public())).unwrap();
        assert!(matches!(verify_command(&c, &trust, &facts(&[], 0)), Err(CommandRefusal::KeyRevoked(_))));
    }
}
