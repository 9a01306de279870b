//! mTLS on 2377: rustls configurations whose certificates can be swapped at
//! runtime (renewal, promotion), a TLS accept loop that feeds tonic, and a
//! client connector that dials through rustls.
//!
//! Server side: every client certificate must chain to the cluster CA, but a
//! client may present none: the join handshake (`Ca.GetRootCa`,
//! `Ca.IssueNodeCertificate`) has no certificate yet. Which RPCs need one is
//! decided per call from the peer certificate (see `crate::server`).
//!
//! Client side: see [`crate::channels`]: managers are dialled by the name `mesh-manager`,
//! so a node only talks to peers whose CA-signed certificate says manager.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::pki::{self, CertIdentity};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot build TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(String),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// The node's certificate, key and the cluster CA. The certificate and key
/// can be replaced while connections are open; new handshakes use the new
/// ones.
pub struct Credentials {
    roots: Arc<RootCertStore>,
    ca_pem: String,
    current: RwLock<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    identity: CertIdentity,
    cert_pem: String,
    key_pem: String,
}

impl Credentials {
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<Credentials>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(parse_cert(ca_pem, "CA certificate")?)
            .map_err(|e| TlsError::Pem {
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        let current = Self::load(cert_pem, key_pem)?;
        Ok(Arc::new(Credentials {
            roots: Arc::new(roots),
            ca_pem: ca_pem.to_string(),
            current: RwLock::new(current),
        }))
    }

    fn load(cert_pem: &str, key_pem: &str) -> Result<Current, TlsError> {
        let cert = parse_cert(cert_pem, "node certificate")?;
        let identity = pki::parse_cert_der(&cert)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "node key",
            reason: e.to_string(),
        })?;
        let key = CertifiedKey::from_der(vec![cert], key, &provider())?;
        Ok(Current {
            key: Arc::new(key),
            identity,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// Swaps in a renewed certificate (and its key).
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = Self::load(cert_pem, key_pem)?;
        *self.current.write().expect("credentials lock poisoned") = next;
        Ok(())
    }

    pub fn identity(&self) -> CertIdentity {
        self.current
            .read()
            .expect("credentials lock poisoned")
            .identity
            .clone()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Current certificate and key, PEM.
    pub fn pems(&self) -> (String, String) {
        let c = self.current.read().expect("credentials lock poisoned");
        (c.cert_pem.clone(), c.key_pem.clone())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .expect("credentials lock poisoned")
            .key
            .clone()
    }

    /// Server config for 2377: client certificates optional but verified.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        // No resumption: a resumed TLS 1.3 session carries the client
        // certificate of its first handshake, and a node's certificate (its
        // role) changes on promotion and demotion.
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(cfg))
    }

    /// Client config presenting this node's certificate and trusting only
    /// the cluster CA.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        // See the server side: every connection proves the current certificate.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client config for the first step of a join: the joiner does not know the
/// CA yet, so it accepts any server certificate, fetches the CA and checks
/// it against the token's digest before trusting anything it received.
pub fn bootstrap_insecure_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config for the second step of a join: the CA is now pinned, the
/// joiner has no certificate yet.
pub fn bootstrap_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(parse_cert(ca_pem, "CA certificate")?)
        .map_err(|e| TlsError::Pem {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type TlsIo = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts TCP connections on `listener`, runs the TLS handshake of each in
/// its own task (a slow client cannot stall others) and yields the
/// established streams, for `tonic::transport::Server::serve_with_incoming`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsIo, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on control port failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_elapsed) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
