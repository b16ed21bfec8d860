//! Node identity in certificates.
//!
//! A node's certificate names it with the URI subject alternative name `strstore:node:<id>`,
//! a field of its own: host names (DNS and IP names, which clients check) can never be taken
//! for an identity, so a certificate for hosts called `node-1,node-2,node-3` still proves one
//! node only. Both ends of a peer connection check the URI and nothing else: the dialler that
//! wants node `id` (it asks for the TLS server name `node-<id>`, used only to carry the id to
//! [`NodeServerVerifier`]), and the acceptor, which checks the id claimed in the hello.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use strstore_protocol::NodeId;
use x509_parser::extensions::GeneralName;

/// Prefix of the URI that carries a node id (`strstore:node:3`).
pub const NODE_URI_PREFIX: &str = "strstore:node:";

/// Prefix of the URI naming a client certificate's holder (`strstore:client:dashboard`).
pub const CLIENT_URI_PREFIX: &str = "strstore:client:";

/// Prefix of the URI giving a client certificate its role (`strstore:role:read`).
pub const ROLE_URI_PREFIX: &str = "strstore:role:";

/// What a client may do on a port that requires client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientRole {
    /// `get`, `len`, `status`, `inspect`: read only (a dashboard).
    Read,
    /// Everything `read` may, and `append` and `set`.
    Write,
}

impl ClientRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Read => "read",
            ClientRole::Write => "write",
        }
    }

    /// The URI that carries this role in a certificate.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

/// The URIs among a certificate's subject alternative names.
fn uris(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let san = parsed.subject_alternative_name().map_err(|e| e.to_string())?;
    let names = san.iter().flat_map(|san| san.value.general_names.iter());
    Ok(names
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect())
}

/// The role a client certificate grants; `None` if it names none (or names both, which
/// `certs` never makes), so that such a certificate is refused rather than guessed at.
pub fn certified_role(cert: &CertificateDer<'_>) -> Option<ClientRole> {
    let roles: Vec<String> =
        uris(cert).ok()?.into_iter().filter(|u| u.starts_with(ROLE_URI_PREFIX)).collect();
    match roles.as_slice() {
        [one] if *one == ClientRole::Read.uri() => Some(ClientRole::Read),
        [one] if *one == ClientRole::Write.uri() => Some(ClientRole::Write),
        _ => None,
    }
}

/// Prefix of the TLS server name a dialler asks for (`node-3`); never matched against names
/// in the certificate.
const SERVER_NAME_PREFIX: &str = "node-";

/// The identity URI of node `id`.
pub fn node_uri(id: NodeId) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The TLS server name a dialler uses when it connects to node `id`.
pub fn node_server_name(id: NodeId) -> ServerName<'static> {
    let name = DnsName::try_from(format!("{SERVER_NAME_PREFIX}{id}"))
        .expect("node-<digits> is a valid DNS name");
    ServerName::DnsName(name)
}

/// The node id a dialler's server name asks for.
fn wanted_node(name: &ServerName<'_>) -> Option<NodeId> {
    let ServerName::DnsName(name) = name else { return None };
    name.as_ref().strip_prefix(SERVER_NAME_PREFIX)?.parse().ok()
}

/// Why a presented certificate does not prove the claimed node id.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The certificate names other nodes (or none): the classic impersonation attempt.
    #[error("claims node {claimed} but its certificate is for {}", describe_ids(.certified))]
    WrongNode { claimed: NodeId, certified: Vec<NodeId> },
    /// The certificate did not parse; rustls accepted it, so this should not happen.
    #[error("claims node {claimed} but its certificate cannot be read: {reason}")]
    Unreadable { claimed: NodeId, reason: String },
}

fn describe_ids(ids: &[NodeId]) -> String {
    match ids {
        [] => format!(
            "no node (it has no {NODE_URI_PREFIX}<id> name: a client certificate, or one made \
             before node identities had a field of their own; re-issue it with \
             `strstore-server certs`)"
        ),
        [one] => format!("node {one}"),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("nodes {} (a node certificate names exactly one)", list.join(", "))
        }
    }
}

/// The node ids a certificate's identity URIs name.
pub fn certified_nodes(cert: &CertificateDer<'_>) -> Result<Vec<NodeId>, String> {
    let mut ids = Vec::new();
    for uri in uris(cert)? {
        let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) else { continue };
        ids.push(id.parse().map_err(|_| format!("malformed node identity {uri:?}"))?);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Checks that `cert` (already verified against the cluster CA by the TLS handshake) names
/// node `claimed` and no other.
pub fn check_claim(cert: &CertificateDer<'_>, claimed: NodeId) -> Result<(), ClaimError> {
    let certified =
        certified_nodes(cert).map_err(|reason| ClaimError::Unreadable { claimed, reason })?;
    if certified == [claimed] {
        Ok(())
    } else {
        Err(ClaimError::WrongNode { claimed, certified })
    }
}

/// Verifies a peer's server certificate: it chains to the cluster CA for server use, and its
/// identity URI names the node the dialler wants. Host names in it play no part.
#[derive(Debug)]
pub struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl NodeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Self {
        Self { roots, provider }
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self.provider.signature_verification_algorithms.all;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            algorithms,
        )?;
        let wanted = wanted_node(server_name).ok_or_else(|| {
            rustls::Error::General(format!("{server_name:?} is not a node's server name"))
        })?;
        check_claim(end_entity, wanted).map_err(|e| match e {
            ClaimError::WrongNode { .. } => {
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
            }
            ClaimError::Unreadable { reason, .. } => rustls::Error::General(reason),
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::testing::{client_cert, node_cert, TestCa};

    #[test]
    fn a_node_certificate_proves_only_its_own_id() {
        let ca = TestCa::generate();
        let cert = node_cert(&ca, 2, &["127.0.0.1", "node-20.example"]);
        assert_eq!(check_claim(&cert, 2), Ok(()));
        assert_eq!(
            check_claim(&cert, 3),
            Err(ClaimError::WrongNode { claimed: 3, certified: vec![2] })
        );
        // `node-20.example` is a host name, not the id 20.
        assert!(check_claim(&cert, 20).is_err());
    }

    #[test]
    fn host_names_that_look_like_node_names_prove_nothing() {
        let ca = TestCa::generate();
        let cert = node_cert(&ca, 2, &["node-1", "node-2", "node-3", "127.0.0.1"]);
        assert_eq!(certified_nodes(&cert), Ok(vec![2]));
        for other in [1, 3] {
            assert!(check_claim(&cert, other).is_err(), "node 2's certificate passed as {other}");
        }
    }

    #[test]
    fn refusals_name_both_ids() {
        let ca = TestCa::generate();
        let err = check_claim(&node_cert(&ca, 2, &[]), 3).unwrap_err();
        assert_eq!(err.to_string(), "claims node 3 but its certificate is for node 2");
        let err = check_claim(&client_cert(&ca), 1).unwrap_err().to_string();
        assert!(err.starts_with("claims node 1 but its certificate is for no node"), "{err}");
    }

    #[test]
    fn server_names_carry_the_wanted_id() {
        assert_eq!(node_uri(7), "strstore:node:7");
        assert_eq!(wanted_node(&node_server_name(7)), Some(7));
        assert_eq!(wanted_node(&ServerName::try_from("localhost").unwrap()), None);
    }
}
