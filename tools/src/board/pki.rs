//! The fleet's certificate authority (rcgen): `drover ca init` makes it, `drover ca server`
//! issues the broker's certificate, `drover provision` a device's client certificate (its
//! common name is the device id, so a broker can map certificates to devices).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::secret::{self, Mode, WriteError};

/// The CA's certificate in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key in a CA directory (0600; keep it off the boards).
pub const CA_KEY: &str = "ca.key";

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or a PEM file.
    #[error("{what}: {error}")]
    Cert {
        /// What was being made or read.
        what: String,
        /// rcgen's error.
        error: rcgen::Error,
    },
    /// Reading the CA failed.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A time outside what certificates can say.
    #[error("certificate validity: {0}")]
    Time(String),
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (a secret: write it 0600, never log it).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<secret>").finish()
    }
}

/// The fleet CA, loaded to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (what the broker and the devices trust).
    pub cert_pem: String,
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |error| PkiError::Cert { what, error }
}

/// `now` … `now + days`, starting an hour early for boards whose clock runs a little behind.
fn validity(params: &mut CertificateParams, now_unix: u64, days: u32) -> Result<(), PkiError> {
    let start = i64::try_from(now_unix).map_err(|e| PkiError::Time(e.to_string()))? - 3600;
    let end = start + 3600 + i64::from(days) * 86_400;
    params.not_before = time::OffsetDateTime::from_unix_timestamp(start).map_err(|e| PkiError::Time(e.to_string()))?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(end).map_err(|e| PkiError::Time(e.to_string()))?;
    Ok(())
}

/// Makes a new CA: `ca.pem` and `ca.key` (0600) in `dir`, never over existing ones unless
/// `force`.
pub fn init(dir: &Path, name: &str, now_unix: u64, days: u32, force: bool) -> Result<PathBuf, PkiError> {
    std::fs::create_dir_all(dir).map_err(|error| PkiError::Read { path: dir.to_path_buf(), error })?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    validity(&mut params, now_unix, days)?;
    let key = KeyPair::generate().map_err(cert_err("the CA key"))?;
    let cert = params.self_signed(&key).map_err(cert_err("the CA certificate"))?;
    let cert_path = dir.join(CA_CERT);
    // The key first: a CA certificate without its key is useless, the reverse is recoverable.
    secret::write(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), Mode::Secret, force)?;
    secret::write(&cert_path, cert.pem().as_bytes(), Mode::Public, force)?;
    Ok(cert_path)
}

impl Ca {
    /// Loads the CA in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| PkiError::Read { path, error })
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(cert_err(format!("{}", dir.join(CA_KEY).display())))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_err(format!("{}", dir.join(CA_CERT).display())))?;
        Ok(Ca { issuer, cert_pem })
    }

    /// A client certificate for a device: common name = the device id, for TLS client auth.
    pub fn issue_client(&self, device: &str, now_unix: u64, days: u32) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, device);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, now_unix, days)?;
        self.sign(params, &format!("the client certificate of {device}"))
    }

    /// A server certificate for the broker, valid for these DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String], now_unix: u64, days: u32) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first.as_str());
        }
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(cert_err(format!("name {n}")))?),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, now_unix, days)?;
        self.sign(params, "the broker's certificate")
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(cert_err(what))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err(what))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000;

    #[test]
    fn a_ca_signs_device_certificates_that_name_the_device() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "fleet CA", NOW, 3650, false).unwrap();
        assert!(matches!(init(dir.path(), "again", NOW, 3650, false), Err(PkiError::Write(WriteError::Exists(_)))));
        let ca = Ca::load(dir.path()).unwrap();
        let issued = ca.issue_client("pi-07", NOW, 365).unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
        let cn: Vec<_> = cert.subject().iter_common_name().map(|c| c.as_str().unwrap().to_string()).collect();
        assert_eq!(cn, ["pi-07"]);
        let ca_der = pem::parse(&ca.cert_pem).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der.contents()).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the fleet CA");
        assert_eq!(cert.validity().not_before.timestamp(), NOW as i64 - 3600);
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "a key is never in debug output");
    }

    #[test]
    fn a_server_certificate_carries_names_and_addresses() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "fleet CA", NOW, 3650, false).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let s = ca.issue_server(&["broker.lan".into(), "127.0.0.1".into()], NOW, 365).unwrap();
        let der = pem::parse(&s.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(san, 2);
    }
}
