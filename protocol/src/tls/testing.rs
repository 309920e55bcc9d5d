//! A throwaway PKI for tests of TLS (the `test-certs` feature): a CA, and
//! certificates it signs for `127.0.0.1` and `localhost`, written as PEM
//! files. Never for production: nothing protects the keys.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::TlsFiles;

/// A CA that signs certificates on demand.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// Where its certificate is, PEM.
    pub ca_file: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA, its certificate written to `dir/NAME-ca.pem`.
    ///
    /// # Errors
    /// Generating or writing failed.
    pub fn new(dir: &Path, name: &str) -> Result<TestCa, Box<dyn std::error::Error>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("semikv test CA {name}"));
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem())?;
        Ok(TestCa { cert, key, ca_file })
    }

    /// A certificate for `127.0.0.1` and `localhost` signed by this CA,
    /// written to `dir/NAME.pem` and `dir/NAME.key` (mode 600); the files
    /// for a process, with this CA as its peers' CA.
    ///
    /// # Errors
    /// Generating or writing failed.
    pub fn issue(&self, dir: &Path, name: &str) -> Result<TlsFiles, Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        Ok(TlsFiles {
            cert: cert_file,
            key: key_file,
            ca: Some(self.ca_file.clone()),
        })
    }
}
