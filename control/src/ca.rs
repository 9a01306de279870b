//! The cluster's certificate authority and join tokens.
//!
//! `mesh init` creates a self-signed root CA. Every node holds a key it
//! generated itself and a certificate the CA signed from its CSR:
//! CN = node id, OU = role, O = cluster id, and a DNS SAN naming the role
//! (`mesh-manager` / `mesh-worker`) so that a client dialling a manager can
//! insist on a manager certificate.
//!
//! A join token is `MESH-1-<digest>-<secret>`: the digest (SHA-256 of the CA
//! certificate, base32) lets the joiner check the CA it fetched before
//! trusting it; the secret decides the role.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE32_NOPAD;
use mesh_proto::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// DNS name in every manager certificate; clients dial managers by it.
pub const MANAGER_SAN: &str = "mesh-manager";
/// DNS name in every worker certificate.
pub const WORKER_SAN: &str = "mesh-worker";

const TOKEN_PREFIX: &str = "MESH";
const TOKEN_VERSION: &str = "1";
/// Validity of the root CA.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Back-dating of `not_before`, for clocks that are a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    #[error("cannot {op}: {source}")]
    Rcgen {
        op: &'static str,
        source: rcgen::Error,
    },
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    #[error("random number generator failed")]
    Random,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_unspecified| CaError::Random)?;
    Ok(buf)
}

fn base32_lower(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// A new node id: 25 lower-case base32 characters (125 random bits).
pub fn new_node_id() -> Result<String, CaError> {
    let mut id = base32_lower(&random_bytes::<16>()?);
    id.truncate(25);
    Ok(id)
}

/// A new cluster id, same shape as a node id.
pub fn new_cluster_id() -> Result<String, CaError> {
    new_node_id()
}

/// A new join-token secret: 26 lower-case base32 characters (128 bits).
pub fn new_secret() -> Result<String, CaError> {
    Ok(base32_lower(&random_bytes::<16>()?))
}

/// 32 random bytes, for symmetric keys.
pub fn new_symmetric_key() -> Result<Vec<u8>, CaError> {
    Ok(random_bytes::<32>()?.to_vec())
}

fn pem_to_der(cert_pem: &str) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CaError::InvalidCert(format!("not a PEM certificate: {e}")))
}

/// SHA-256 of the CA certificate (DER), base32, as it appears in join tokens.
pub fn ca_digest(ca_cert_pem: &str) -> Result<String, CaError> {
    let der = pem_to_der(ca_cert_pem)?;
    Ok(base32_lower(
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref(),
    ))
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        _ => "worker",
    }
}

fn system_now() -> SystemTime {
    SystemTime::now()
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_secs(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The root CA: its certificate and signing key.
pub struct RootCa {
    cert_pem: String,
    key: KeyPair,
}

impl RootCa {
    /// A new self-signed root CA for cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<RootCa, CaError> {
        let key = KeyPair::generate().map_err(|source| CaError::Rcgen {
            op: "generate CA key",
            source,
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mesh root CA");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = system_now();
        params.not_before = offset(now - CLOCK_SKEW);
        params.not_after = offset(now + CA_VALIDITY);
        params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()?));
        let cert = params.self_signed(&key).map_err(|source| CaError::Rcgen {
            op: "self-sign CA",
            source,
        })?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads a CA from the PEM strings the store keeps.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| CaError::Rcgen {
            op: "parse CA key",
            source,
        })?;
        pem_to_der(cert_pem)?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn digest(&self) -> Result<String, CaError> {
        ca_digest(&self.cert_pem)
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject is
    /// ours (node id, role, cluster id), whatever the CSR asked for.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: NodeRole,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<String, CaError> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::InvalidCsr)?;
        let san = if role == NodeRole::Manager {
            MANAGER_SAN
        } else {
            WORKER_SAN
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role_name(role));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(san.try_into().map_err(|source| {
            CaError::Rcgen {
                op: "encode SAN",
                source,
            }
        })?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = system_now();
        params.not_before = offset(now - CLOCK_SKEW);
        params.not_after = offset(now + validity);
        params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()?));
        csr.params = params;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(|source| {
            CaError::Rcgen {
                op: "load CA as issuer",
                source,
            }
        })?;
        let cert = csr.signed_by(&issuer).map_err(|source| CaError::Rcgen {
            op: "sign node certificate",
            source,
        })?;
        Ok(cert.pem())
    }
}

/// A node's own key pair; it never leaves the node.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, CaError> {
        let key = KeyPair::generate().map_err(|source| CaError::Rcgen {
            op: "generate node key",
            source,
        })?;
        Ok(NodeKey { key })
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, CaError> {
        let key = KeyPair::from_pem(pem).map_err(|source| CaError::Rcgen {
            op: "parse node key",
            source,
        })?;
        Ok(NodeKey { key })
    }

    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR carrying this key; the CA decides the subject.
    pub fn csr_pem(&self) -> Result<String, CaError> {
        let params = CertificateParams::default();
        let csr = params
            .serialize_request(&self.key)
            .map_err(|source| CaError::Rcgen {
                op: "create CSR",
                source,
            })?;
        csr.pem().map_err(|source| CaError::Rcgen {
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
pub fn parse_cert_der(der: &[u8]) -> Result<CertIdentity, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::InvalidCert(e.to_string()))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let node_id = first(&mut subject.iter_common_name())
        .ok_or_else(|| CaError::InvalidCert("no common name (node id)".into()))?;
    let role = match first(&mut subject.iter_organizational_unit()).as_deref() {
        Some("manager") => NodeRole::Manager,
        Some("worker") => NodeRole::Worker,
        other => return Err(CaError::InvalidCert(format!("unknown role {other:?}"))),
    };
    let cluster_id = first(&mut subject.iter_organization())
        .ok_or_else(|| CaError::InvalidCert("no organization (cluster id)".into()))?;
    let validity = cert.validity();
    Ok(CertIdentity {
        node_id,
        role,
        cluster_id,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

pub fn parse_cert_pem(pem: &str) -> Result<CertIdentity, CaError> {
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
    type Err = CaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let bad = |why: &str| CaError::InvalidToken(why.to_string());
        match parts.as_slice() {
            [prefix, version, digest, secret] => {
                if *prefix != TOKEN_PREFIX {
                    return Err(bad("it does not start with MESH-"));
                }
                if *version != TOKEN_VERSION {
                    return Err(CaError::InvalidToken(format!(
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

/// Constant-time comparison of two secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix time now in milliseconds.
pub fn now_ms() -> i64 {
    system_now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix time now in seconds.
pub fn now_secs() -> i64 {
    unix_secs(system_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_certificate_carries_node_identity_not_csr_subject() {
        let ca = RootCa::generate("cluster1").unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .sign_csr(
                &key.csr_pem().unwrap(),
                "node1",
                NodeRole::Manager,
                "cluster1",
                Duration::from_secs(3600),
            )
            .unwrap();
        let id = parse_cert_pem(&cert).unwrap();
        assert_eq!(id.node_id, "node1");
        assert_eq!(id.role, NodeRole::Manager);
        assert_eq!(id.cluster_id, "cluster1");
        assert!(id.not_after - now_secs() <= 3600 && id.not_after - now_secs() > 3500);
    }

    #[test]
    fn ca_survives_pem_round_trip_and_digest_is_stable() {
        let ca = RootCa::generate("c").unwrap();
        let again = RootCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca.digest().unwrap(), again.digest().unwrap());
        assert_eq!(ca.digest().unwrap().len(), 52);
        let other = RootCa::generate("c").unwrap();
        assert_ne!(ca.digest().unwrap(), other.digest().unwrap());
    }

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let ca = RootCa::generate("c").unwrap();
        let t = JoinToken {
            ca_digest: ca.digest().unwrap(),
            secret: new_secret().unwrap(),
        };
        let parsed: JoinToken = t.to_string().parse().unwrap();
        assert_eq!(parsed, t);
        for bad in [
            "",
            "MESH-1-abc-def",
            "SWMTKN-1-x-y",
            "MESH-2-aaaa-bbbb",
            &t.to_string().replace("MESH-1-", "MESH-1-x"),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?} parsed");
        }
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "debug output leaks the secret"
        );
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = RootCa::generate("c").unwrap();
        let csr = NodeKey::generate().unwrap().csr_pem().unwrap();
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        lines[mid] = lines[mid].chars().rev().collect();
        let err = ca.sign_csr(
            &lines.join("\n"),
            "n",
            NodeRole::Worker,
            "c",
            Duration::from_secs(60),
        );
        assert!(err.is_err());
    }

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
    fn ids_and_secrets_have_expected_shape() {
        let id = new_node_id().unwrap();
        assert_eq!(id.len(), 25);
        assert_ne!(id, new_node_id().unwrap());
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
