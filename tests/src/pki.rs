//! Certificates made by the tests: a CA, a server leaf for `localhost`/`127.0.0.1`, and a
//! client leaf for mutual TLS, written as PEM files into a folder.
//!
//! rustls refuses a self-signed certificate used as its own leaf (`CaUsedAsEndEntity`),
//! so the server gets a real chain: CA, then a leaf with `CA:FALSE` and both SANs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one CA and the leaves it signed.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Makes a CA named `name` and its leaves under `dir/name/`.
    pub fn generate(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.distinguished_name.push(DnType::CommonName, format!("resultstore test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca cert");

        let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, format!("{stem} of {name}"));
            params.is_ca = IsCa::ExplicitNoCa;
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &ca).expect("leaf cert");
            let (c, k) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
            std::fs::write(&c, cert.pem()).expect("write cert");
            std::fs::write(&k, key.serialize_pem()).expect("write key");
            (c, k)
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
        let (client_cert, client_key) = leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        Pki { ca: ca_path, server_cert, server_key, client_cert, client_key }
    }

    /// The `[tls]` table of a server using this PKI (`mutual`: clients need a certificate).
    pub fn tls_table(&self, mutual: bool) -> String {
        let mut t =
            format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", self.server_cert.display(), self.server_key.display());
        if mutual {
            t.push_str(&format!("client_ca = \"{}\"\n", self.ca.display()));
        }
        t
    }
}
