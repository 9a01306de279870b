//! What every node needs of the cluster's PKI: its own key and CSR, what a node certificate
//! says ([`CertIdentity`]), and join tokens.
//!
//! A node certificate has CN = node id, OU = role, O = cluster id, and a DNS SAN naming the
//! role ([`MANAGER_SAN`] / [`WORKER_SAN`]) so that a client dialling a manager can insist on a
//! manager certificate. A join token is `MESH-1-<digest>-<secret>`: the digest (SHA-256 of the
//! CA certificate, base32) lets the joiner check the CA it fetched before trusting it; the
//! secret decides the role. Signing lives with the CA, in the manager.

use std::fmt;
use std::str::FromStr;

use mesh_proto::NodeRole;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ids::{RandomError, base32_lower, random_bytes};

/// DNS name in every manager certificate; clients dial managers by it.
pub const MANAGER_SAN: &str = "mesh-manager";
/// DNS name in every worker certificate.
pub const WORKER_SAN: &str = "mesh-worker";

const TOKEN_PREFIX: &str = "MESH";
const TOKEN_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    #[error("cannot {op}: {source}")]
    Rcgen {
        op: &'static str,
        source: rcgen::Error,
    },
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// A new join-token secret: 26 lower-case base32 characters (128 bits).
pub fn new_secret() -> Result<String, PkiError> {
    Ok(base32_lower(&random_bytes::<16>()?))
}

/// Constant-time comparison of two secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The DER of a PEM certificate.
pub fn pem_to_der(cert_pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCert(format!("not a PEM certificate: {e}")))
}

/// SHA-256 of the CA certificate (DER), base32, as it appears in join tokens.
pub fn ca_digest(ca_cert_pem: &str) -> Result<String, PkiError> {
    let der = pem_to_der(ca_cert_pem)?;
    Ok(base32_lower(
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref(),
    ))
}

/// The OU naming `role` in a node certificate.
pub fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        _ => "worker",
    }
}

/// A node's own key pair; it never leaves the node.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, PkiError> {
        let key = KeyPair::generate().map_err(|source| PkiError::Rcgen {
            op: "generate node key",
            source,
        })?;
        Ok(NodeKey { key })
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, PkiError> {
        let key = KeyPair::from_pem(pem).map_err(|source| PkiError::Rcgen {
            op: "parse node key",
            source,
        })?;
        Ok(NodeKey { key })
    }

    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR carrying this key; the CA decides the subject.
    pub fn csr_pem(&self) -> Result<String, PkiError> {
        let params = CertificateParams::default();
        let csr = params
            .serialize_request(&self.key)
            .map_err(|source| PkiError::Rcgen {
                op: "create CSR",
                source,
            })?;
        csr.pem().map_err(|source| PkiError::Rcgen {
            op: "encode CSR",
            source,
        })
    }
}

/// What a node certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertIdentity {
    /// True once `fraction` of the certificate's lifetime has passed.
    pub fn needs_renewal(&self, now_unix: i64, fraction: f64) -> bool {
        let life = (self.not_after - self.not_before).max(1) as f64;
        (now_unix - self.not_before) as f64 >= life * fraction
    }
}

/// Reads the identity out of a node certificate (DER).
pub fn parse_cert_der(der: &[u8]) -> Result<CertIdentity, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::InvalidCert(e.to_string()))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let node_id = first(&mut subject.iter_common_name())
        .ok_or_else(|| PkiError::InvalidCert("no common name (node id)".into()))?;
    let role = match first(&mut subject.iter_organizational_unit()).as_deref() {
        Some("manager") => NodeRole::Manager,
        Some("worker") => NodeRole::Worker,
        other => return Err(PkiError::InvalidCert(format!("unknown role {other:?}"))),
    };
    let cluster_id = first(&mut subject.iter_organization())
        .ok_or_else(|| PkiError::InvalidCert("no organization (cluster id)".into()))?;
    let validity = cert.validity();
    Ok(CertIdentity {
        node_id,
        role,
        cluster_id,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

pub fn parse_cert_pem(pem: &str) -> Result<CertIdentity, PkiError> {
    parse_cert_der(&pem_to_der(pem)?)
}

/// `MESH-1-<ca digest>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.ca_digest, self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is a credential: keep it out of logs.
        write!(
            f,
            "JoinToken({TOKEN_PREFIX}-{TOKEN_VERSION}-{}-…)",
            self.ca_digest
        )
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let bad = |why: &str| PkiError::InvalidToken(why.to_string());
        match parts.as_slice() {
            [prefix, version, digest, secret] => {
                if *prefix != TOKEN_PREFIX {
                    return Err(bad("it does not start with MESH-"));
                }
                if *version != TOKEN_VERSION {
                    return Err(PkiError::InvalidToken(format!(
                        "unsupported token version {version}"
                    )));
                }
                let ok = |p: &str, len: usize| {
                    p.len() == len
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
                };
                if !ok(digest, 52) {
                    return Err(bad("the CA digest part is malformed"));
                }
                if !ok(secret, 26) {
                    return Err(bad("the secret part is malformed"));
                }
                Ok(JoinToken {
                    ca_digest: digest.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(bad("expected MESH-1-<digest>-<secret>")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_due_after_fraction_of_lifetime() {
        let id = CertIdentity {
            node_id: "n".into(),
            role: NodeRole::Worker,
            cluster_id: "c".into(),
            not_before: 1000,
            not_after: 2000,
        };
        assert!(!id.needs_renewal(1500, 0.66));
        assert!(id.needs_renewal(1700, 0.66));
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert_eq!(new_secret().unwrap().len(), 26);
    }
}
