//! The cluster's certificate authority: the root CA `mesh init` creates and the node
//! certificates it signs. What every node needs of certificates (its key, CSR, reading a
//! certificate's identity, join tokens) is in [`mesh_common::pki`].

use std::time::{Duration, SystemTime};

use mesh_common::ids::random_bytes;
use mesh_common::pki::{MANAGER_SAN, PkiError, WORKER_SAN, ca_digest, pem_to_der, role_name};
use mesh_common::time::unix_secs;
use mesh_proto::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Validity of the root CA.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Back-dating of `not_before`, for clocks that are a little behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    #[error("cannot {op}: {source}")]
    Rcgen {
        op: &'static str,
        source: rcgen::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl From<mesh_common::ids::RandomError> for CaError {
    fn from(e: mesh_common::ids::RandomError) -> CaError {
        CaError::Pki(PkiError::Random(e))
    }
}

/// 32 random bytes, for symmetric keys.
pub fn new_symmetric_key() -> Result<Vec<u8>, CaError> {
    Ok(random_bytes::<32>()?.to_vec())
}

fn system_now() -> SystemTime {
    SystemTime::now()
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
        Ok(ca_digest(&self.cert_pem)?)
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

#[cfg(test)]
mod tests {
    use mesh_common::pki::{JoinToken, NodeKey, new_secret, parse_cert_pem};
    use mesh_common::time::now_secs;

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
}
