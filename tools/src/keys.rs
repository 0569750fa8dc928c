//! Key files: generating Ed25519 keys and reading/writing them.
//!
//! Secret keys are written with mode 0600 and never over an existing file; public keys are
//! plain. Both are small JSON documents so an operator can tell what a file is by opening it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use drover_runtime::trust::{SecretKey, key_id};
use drover_wire::trust::PublicKey;
use serde::{Deserialize, Serialize};

/// What a key is for; recorded in its files so a release key is not used as a root by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The offline root of trust: signs root documents and delegations.
    Root,
    /// Signs bundles of the models it is delegated for.
    Release,
    /// Signs commands to devices (install, rollback, strategy changes).
    Operator,
}

impl Role {
    fn article(self) -> &'static str {
        match self {
            Role::Root => "a root",
            Role::Release => "a release",
            Role::Operator => "an operator",
        }
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not a Drover key of the expected kind.
    #[error("{path}: {reason}")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The OS random source failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    drover_key: String,
    role: Role,
    id: String,
    secret: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    drover_key: String,
    role: Role,
    id: String,
    public: String,
}

const SECRET_KIND: &str = "ed25519-secret";
const PUBLIC_KIND: &str = "ed25519-public";

/// A new key from the operating system's random source.
pub fn generate() -> Result<SecretKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SecretKey::from_bytes(&seed))
}

/// The id users see for a key (hex of the first 8 bytes of its SHA-256).
pub fn id_of(key: &PublicKey) -> String {
    hex::encode(key_id(key).0)
}

/// Writes `key` as `<dir>/<name>.key` (0600, never overwriting) and `<dir>/<name>.pub`.
pub fn write_pair(dir: &Path, name: &str, role: Role, key: &SecretKey) -> Result<(PathBuf, PathBuf), KeyError> {
    let public = key.public();
    let id = id_of(&public);
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| KeyError::Io { path, error }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret =
        SecretFile { drover_key: SECRET_KIND.into(), role, id: id.clone(), secret: hex::encode(key.to_bytes()) };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&secret_path).map_err(io(&secret_path))?;
    let text = serde_json::to_string_pretty(&secret).map_err(|e| KeyError::Random(e.to_string()))?;
    file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(io(&secret_path))?;
    let public = PublicFile { drover_key: PUBLIC_KIND.into(), role, id, public: hex::encode(public.0) };
    let text = serde_json::to_string_pretty(&public).map_err(|e| KeyError::Random(e.to_string()))?;
    std::fs::write(&public_path, text).map_err(io(&public_path))?;
    Ok((secret_path, public_path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Io { path: path.to_path_buf(), error })?;
    serde_json::from_str(&text).map_err(|e| KeyError::Format { path: path.to_path_buf(), reason: e.to_string() })
}

fn decode32(path: &Path, hex_text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(hex_text).map_err(|e| KeyError::Format { path: path.into(), reason: e.to_string() })?;
    bytes.try_into().map_err(|_| KeyError::Format { path: path.into(), reason: "a key is 32 bytes".into() })
}

/// Reads a secret key file, checking its kind and role.
pub fn read_secret(path: &Path, role: Role) -> Result<SecretKey, KeyError> {
    let f: SecretFile = read_json(path)?;
    if f.drover_key != SECRET_KIND {
        return Err(KeyError::Format { path: path.into(), reason: format!("not a secret key ({})", f.drover_key) });
    }
    if f.role != role {
        return Err(KeyError::Format {
            path: path.into(),
            reason: format!("this is {} key; {} key is needed", f.role.article(), role.article()),
        });
    }
    Ok(SecretKey::from_bytes(&decode32(path, &f.secret)?))
}

/// Reads a public key file (or the public half of a secret key file), checking its role.
pub fn read_public(path: &Path, role: Role) -> Result<PublicKey, KeyError> {
    let value: serde_json::Value = read_json(path)?;
    if value.get("secret").is_some() {
        return Ok(read_secret(path, role)?.public());
    }
    let f: PublicFile = serde_json::from_value(value)
        .map_err(|e| KeyError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    if f.drover_key != PUBLIC_KIND {
        return Err(KeyError::Format { path: path.into(), reason: format!("not a public key ({})", f.drover_key) });
    }
    if f.role != role {
        return Err(KeyError::Format {
            path: path.into(),
            reason: format!("this is {} key; {} key is needed", f.role.article(), role.article()),
        });
    }
    Ok(PublicKey(decode32(path, &f.public)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pair_round_trips_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        let (secret, public) = write_pair(dir.path(), "root", Role::Root, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(read_secret(&secret, Role::Root).unwrap().public(), key.public());
        assert_eq!(read_public(&public, Role::Root).unwrap(), key.public());
        assert_eq!(read_public(&secret, Role::Root).unwrap(), key.public());
    }

    #[test]
    fn existing_keys_are_never_overwritten_and_roles_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        let (secret, _) = write_pair(dir.path(), "k", Role::Release, &key).unwrap();
        assert!(matches!(write_pair(dir.path(), "k", Role::Release, &generate().unwrap()), Err(KeyError::Io { .. })));
        assert_eq!(read_secret(&secret, Role::Release).unwrap().public(), key.public());
        let err = read_secret(&secret, Role::Root).unwrap_err();
        assert!(err.to_string().contains("this is a release key; a root key is needed"), "{err}");
    }

    #[test]
    fn two_generated_keys_differ() {
        assert_ne!(generate().unwrap().public(), generate().unwrap().public());
    }
}
