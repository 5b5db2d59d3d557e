//! TLS with rustls (ring provider only): the data listener's server config, upstream client
//! configs, and the names a client certificate carries.
//!
//! Files are read when a config is loaded, so a reload picks up rotated certificates and keys;
//! connections already established keep the material they were opened with, except that one
//! whose client certificate the reloaded config no longer trusts is closed ([`crate::conns`]).

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// The one crypto provider tenantgate uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", crate::config::shown_path(path)))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(&bytes[..]))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(&bytes[..]))
        .map_err(|e| format!("{}: not a PEM key file: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key found", path.display()))
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: bad CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A digest of files' contents: a reload rebuilds what depends on them only when they changed.
fn digest(paths: &[&Path]) -> String {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(p).unwrap_or_default());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// A certificate is asked for; connections without one are still served.
    Optional,
    /// Connections without a valid certificate fail the handshake.
    Required,
}

/// The data listener's TLS, built from `server.tls`.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub handshake_timeout: Duration,
    pub config: Arc<ServerConfig>,
    /// What checks client certificates, kept to check open connections again on reload.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the server config: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
    pub fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
        client_auth: ClientAuth,
        handshake_timeout: Duration,
    ) -> Result<Self, String> {
        let certs = load_certs(&cert_file)?;
        let key = load_key(&key_file)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?;
        let verifier = match (&client_ca_file, client_auth) {
            (Some(ca), ClientAuth::Required | ClientAuth::Optional) => {
                let roots = Arc::new(load_roots(ca)?);
                let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider());
                if client_auth == ClientAuth::Optional {
                    v = v.allow_unauthenticated();
                }
                Some(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
            }
            _ => None,
        };
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate and key: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_file,
            key_file,
            client_ca_file,
            client_auth,
            handshake_timeout,
            config: Arc::new(config),
            verifier,
        })
    }

    /// Whether a handshake under this config would accept a client presenting `chain` (end
    /// entity first). `false` when client certificates are not asked for at all: a certificate
    /// identity then has nothing to stand on.
    pub fn trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let (Some(verifier), Some((end_entity, intermediates))) =
            (&self.verifier, chain.split_first())
        else {
            return false;
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// An upstream's TLS, built from `upstreams.<name>.tls`.
#[derive(Clone)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
    pub config: Arc<ClientConfig>,
    /// Of the files' contents: a reload with rotated files is a change (a new pool).
    digest: String,
}

/// Same paths, same options and the same file contents: the built config is derived from
/// those, so it is left out.
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.server_name == other.server_name
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.digest == other.digest
    }
}

impl Eq for UpstreamTls {}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("digest", &self.digest)
            .finish()
    }
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken certificate in the system store should not stop the others from loading.
        let _ = roots.add(cert);
    }
    roots
}

impl UpstreamTls {
    pub fn load(
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        server_name: Option<String>,
        insecure_skip_verify: bool,
    ) -> Result<Self, String> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = if insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(
                    provider().signature_verification_algorithms,
                )))
        } else {
            let roots = match &ca_file {
                Some(ca) => load_roots(ca)?,
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let config = match (&cert_file, &key_file) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(load_certs(c)?, load_key(k)?)
                .map_err(|e| {
                    format!(
                        "{} and {} do not make a usable client certificate: {e}",
                        c.display(),
                        k.display()
                    )
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("cert_file and key_file go together".into()),
        };
        if let Some(name) = &server_name {
            ServerName::try_from(name.clone()).map_err(|e| format!("server_name {name:?}: {e}"))?;
        }
        let files: Vec<&Path> = [&ca_file, &cert_file, &key_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        Ok(UpstreamTls {
            digest: digest(&files),
            ca_file,
            cert_file,
            key_file,
            server_name,
            insecure_skip_verify,
            config: Arc::new(config),
        })
    }

    /// The client config for plain `https` upstreams with no `tls` block: system roots.
    pub fn system_default() -> Result<Arc<ClientConfig>, String> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                Arc::new(
                    b.with_root_certificates(system_roots())
                        .with_no_client_auth(),
                )
            })
            .map_err(|e| format!("TLS setup: {e}"))
    }
}

/// Accepts any server certificate (`insecure_skip_verify`), but still checks handshake
/// signatures, so the connection is at least encrypted to whoever holds that certificate's key.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The names in a verified client certificate that identities can match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    pub cn: Vec<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub email: Vec<String>,
}

impl PeerNames {
    /// Reads subject CNs and SANs from a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> Option<PeerNames> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names = PeerNames::default();
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.cn.push(s.to_owned());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(s) => names.dns.push((*s).to_owned()),
                    GeneralName::URI(s) => names.uri.push((*s).to_owned()),
                    GeneralName::RFC822Name(s) => names.email.push((*s).to_owned()),
                    _ => {}
                }
            }
        }
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_read_cn_and_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["sidecar.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sidecar-eu");
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://example/sidecar").unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            rcgen::Ia5String::try_from("ops@example.org").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = PeerNames::from_der(cert.der()).unwrap();
        assert_eq!(names.cn, ["sidecar-eu"]);
        assert_eq!(names.dns, ["sidecar.example"]);
        assert_eq!(names.uri, ["spiffe://example/sidecar"]);
        assert_eq!(names.email, ["ops@example.org"]);
    }

    #[test]
    fn missing_files_are_named() {
        let e = load_certs(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
