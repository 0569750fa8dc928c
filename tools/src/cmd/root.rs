//! `drover root`: start a fleet's root of trust, rotate it, revoke release keys.

use std::path::PathBuf;

use anyhow::Context;

use crate::keys::{Role, id_of, read_public, read_secret};
use crate::trust_docs::{load_root, root_init, root_next, save};

/// The root operations.
#[derive(Debug, clap::Subcommand)]
pub enum RootCommand {
    /// Make version 1 of the root document, signed by the root key.
    Init {
        /// The root secret key.
        #[arg(long)]
        key: PathBuf,
        /// How long the root is valid.
        #[arg(long, default_value = "3650d", value_parser = super::parse_duration)]
        expires: std::time::Duration,
        /// Where to write the root document.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the next root version with a new root key (signed by the old and the new key).
    Rotate {
        /// The current root document.
        #[arg(long)]
        current: PathBuf,
        /// The current root secret key.
        #[arg(long)]
        key: PathBuf,
        /// The new root secret key.
        #[arg(long)]
        new_key: PathBuf,
        /// How long the new root is valid.
        #[arg(long, default_value = "3650d", value_parser = super::parse_duration)]
        expires: std::time::Duration,
        /// Where to write the new root document.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the next root version revoking release keys (signed by the current root key).
    Revoke {
        /// The current root document.
        #[arg(long)]
        current: PathBuf,
        /// The current root secret key.
        #[arg(long)]
        key: PathBuf,
        /// Public key files of the release keys to revoke.
        #[arg(long = "release", required = true)]
        releases: Vec<PathBuf>,
        /// How long the new root is valid.
        #[arg(long, default_value = "3650d", value_parser = super::parse_duration)]
        expires: std::time::Duration,
        /// Where to write the new root document.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a root operation at time `now` (Unix seconds).
pub fn run(cmd: &RootCommand, now: u64) -> anyhow::Result<()> {
    let doc = match cmd {
        RootCommand::Init { key, expires, out } => {
            let key = read_secret(key, Role::Root)?;
            let doc = root_init(&key, now + expires.as_secs());
            save(out, &doc)?;
            doc
        }
        RootCommand::Rotate { current, key, new_key, expires, out } => {
            let cur = load_root(current)?;
            let key = read_secret(key, Role::Root)?;
            let new_key = read_secret(new_key, Role::Root)?;
            let doc = root_next(&cur, &key, &new_key, &[], now + expires.as_secs()).context("rotate")?;
            save(out, &doc)?;
            doc
        }
        RootCommand::Revoke { current, key, releases, expires, out } => {
            let cur = load_root(current)?;
            let key = read_secret(key, Role::Root)?;
            let revoke = releases.iter().map(|p| read_public(p, Role::Release)).collect::<Result<Vec<_>, _>>()?;
            let doc = root_next(&cur, &key, &key, &revoke, now + expires.as_secs()).context("revoke")?;
            save(out, &doc)?;
            doc
        }
    };
    println!(
        "root v{} key {} expires {}, {} revoked key(s)",
        doc.doc.version,
        id_of(&doc.doc.key),
        super::rfc3339(doc.doc.expires_at),
        doc.doc.revoked.len()
    );
    Ok(())
}
