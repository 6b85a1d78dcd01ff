//! TLS as OVS does it (`ssl:` / `pssl:` with `-p/--private-key`, `-c/--certificate`,
//! `-C/--ca-cert`, PEM files as `ovs-pki` makes them):
//! * listeners require a client certificate signed by the CA, as `ovsdb-server` does;
//! * upstream, the proxy presents its own certificate and checks the server's chain against the
//!   CA, but not its name: OVS checks neither hostname nor CN, and `ovs-pki` certificates carry
//!   names like `server id:<uuid>`.
//!
//! Files are re-read when they change (rotated Kubernetes secrets): new connections use the new
//! material, established sessions keep theirs. A change that does not load (half-written
//! secret, mismatched key) is logged and the previous material stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The three PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub private_key: PathBuf,
    pub certificate: PathBuf,
    pub ca_cert: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {} holds no {expected}", path.display())]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("the private key {} does not match the certificate {}: {source}", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Material {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    stamp: Vec<Option<(SystemTime, u64)>>,
}

fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.private_key, &files.certificate, &files.ca_cert]
        .iter()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_path_buf(), source };
    let certs =
        CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<Vec<_>, _>>().map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "PEM certificate" });
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> Result<Material, TlsError> {
    let stamp = stamp(files);
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: files.private_key.clone(),
            expected: "PEM private key",
        },
        source => TlsError::Read { what: "private key", path: files.private_key.clone(), source },
    })?;
    let chain = certs("certificate", &files.certificate)?;
    let mut roots = RootCertStore::empty();
    for ca in certs("CA certificate", &files.ca_cert)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("CA certificate {}: {e}", files.ca_cert.display())))?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    let signer = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Config(format!("private key {}: {e}", files.private_key.display())))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signer).keys_match().map_err(|source| {
        TlsError::Mismatch { key: files.private_key.clone(), cert: files.certificate.clone(), source }
    })?;
    let cfg_err = |e: rustls::Error| TlsError::Config(e.to_string());
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(cfg_err)?;
    let chain_only = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain_only)))
        .with_client_auth_cert(chain, key)
        .map_err(cfg_err)?;
    // No session resumption upstream: ovsdb-server (OpenSSL 3, OVS 3.1) answers a resumed
    // handshake from a client with a certificate with an `internal error` alert.
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Material { server: Arc::new(server), client: Arc::new(client), stamp })
}

/// Checks the server's chain against the CA like webpki does, but not its name (as OVS).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS material in force, swapped whole when the files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
}

impl Tls {
    /// Loads the three files, or says which one is wrong and how.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let material = load(&files)?;
        Ok(Tls { files, current: RwLock::new(Arc::new(material)) })
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.material().server.clone())
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.material().client.clone())
    }

    /// Re-reads the files if any changed. `Ok(true)`: new material in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if stamp(&self.files) == self.material().stamp {
            return Ok(false);
        }
        let material = load(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
        Ok(true)
    }

    /// Polls the files every `every` until `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    info!("TLS certificate, key or CA changed: reloaded for new connections");
                }
                Ok(false) => {}
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// The name to present upstream: the host's IP, or its DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("upstream host {host:?}: {e}")))
}
