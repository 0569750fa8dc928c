//! Mosquitto 2's password file format, written by us so that `drover acl` needs no
//! `mosquitto_passwd` on the operator's machine: `user:$7$ITERATIONS$SALT$HASH`, PBKDF2 with
//! HMAC-SHA512, a 12-byte salt, a 64-byte hash, both base64 (standard, padded). These are the
//! parameters `mosquitto_passwd` itself uses (101 iterations), so Mosquitto reads the file as
//! its own; the end-to-end test logs in with it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha512};

/// `mosquitto_passwd`'s iteration count (Mosquitto 2).
pub const ITERATIONS: u32 = 101;
/// `mosquitto_passwd`'s salt length, bytes.
pub const SALT_LEN: usize = 12;

const BLOCK: usize = 128;

/// HMAC-SHA512 (RFC 2104) over the vetted SHA-512 of `sha2`.
fn hmac_sha512(key: &[u8], message: &[u8]) -> [u8; 64] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..64].copy_from_slice(&Sha512::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha512::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha512::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    let mut out = [0u8; 64];
    out.copy_from_slice(&outer);
    out
}

/// PBKDF2-HMAC-SHA512 (RFC 8018), one block: Mosquitto's hash is exactly 64 bytes.
pub fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac_sha512(password, &first);
    let mut t = u;
    for _ in 1..iterations {
        u = hmac_sha512(password, &u);
        t.iter_mut().zip(u.iter()).for_each(|(a, b)| *a ^= b);
    }
    t
}

/// One line of the password file for `user` (pure: the salt is given).
pub fn line(user: &str, password: &[u8], salt: &[u8; SALT_LEN]) -> String {
    let hash = pbkdf2_sha512(password, salt, ITERATIONS);
    format!("{user}:$7${ITERATIONS}${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
}

/// A fresh random salt.
pub fn salt() -> Result<[u8; SALT_LEN], getrandom::Error> {
    let mut s = [0u8; SALT_LEN];
    getrandom::fill(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_the_published_sha512_vectors() {
        // The PBKDF2-HMAC-SHA512 vectors everyone checks against (password "password", salt "salt").
        let one = pbkdf2_sha512(b"password", b"salt", 1);
        assert_eq!(
            hex::encode(one),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        let two = pbkdf2_sha512(b"password", b"salt", 2);
        assert_eq!(
            hex::encode(two),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53c\
             f76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    #[test]
    fn lines_have_mosquittos_shape() {
        let l = line("pi-1", b"s3cret", &[7; SALT_LEN]);
        let parts: Vec<&str> = l.split('$').collect();
        assert_eq!(parts[0], "pi-1:");
        assert_eq!(parts[1], "7");
        assert_eq!(parts[2], "101");
        assert_eq!(STANDARD.decode(parts[3]).unwrap(), [7; SALT_LEN]);
        assert_eq!(STANDARD.decode(parts[4]).unwrap().len(), 64);
        assert_ne!(salt().unwrap(), salt().unwrap());
    }
}
