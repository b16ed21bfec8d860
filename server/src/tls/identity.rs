//! Node identity in certificates.
//!
//! A node's certificate names it with the DNS subject alternative name `node-<id>`. Both ends
//! of a peer connection check that name, so identity never depends on addresses: the dialler
//! verifies the server certificate for `node-<peer id>`, and the acceptor checks that the id a
//! dialler claims in its hello is named by the client certificate it presented.

use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use strstore_protocol::NodeId;
use webpki::EndEntityCert;

/// Prefix of the DNS name that carries a node id (`node-3`).
const NODE_NAME_PREFIX: &str = "node-";

/// The name node `id` has in certificates: `node-<id>`.
pub fn node_name(id: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

/// The TLS server name a dialler verifies when it connects to node `id`.
pub fn node_server_name(id: NodeId) -> ServerName<'static> {
    let name = DnsName::try_from(node_name(id)).expect("node-<digits> is a valid DNS name");
    ServerName::DnsName(name)
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
        [] => "no node (it is not a node certificate)".into(),
        [one] => format!("node {one}"),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("nodes {}", list.join(", "))
        }
    }
}

/// Checks that `cert` (already verified against the cluster CA by the TLS handshake) names
/// node `claimed`. The match uses webpki's name check, not our own parsing.
pub fn check_claim(cert: &CertificateDer<'_>, claimed: NodeId) -> Result<(), ClaimError> {
    let unreadable = |e: webpki::Error| ClaimError::Unreadable { claimed, reason: e.to_string() };
    let parsed = EndEntityCert::try_from(cert).map_err(unreadable)?;
    match parsed.verify_is_valid_for_subject_name(&node_server_name(claimed)) {
        Ok(()) => Ok(()),
        Err(_) => Err(ClaimError::WrongNode { claimed, certified: node_ids(&parsed) }),
    }
}

/// Node ids a certificate names, for log messages (never for the identity decision itself).
fn node_ids(cert: &EndEntityCert<'_>) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = cert
        .valid_dns_names()
        .filter_map(|name| {
            let (prefix, id) = name.split_at_checked(NODE_NAME_PREFIX.len())?;
            prefix.eq_ignore_ascii_case(NODE_NAME_PREFIX).then(|| id.parse().ok())?
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
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
    fn refusals_name_both_ids() {
        let ca = TestCa::generate();
        let err = check_claim(&node_cert(&ca, 2, &[]), 3).unwrap_err();
        assert_eq!(err.to_string(), "claims node 3 but its certificate is for node 2");
        let err = check_claim(&client_cert(&ca), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "claims node 1 but its certificate is for no node (it is not a node certificate)"
        );
    }

    #[test]
    fn server_names_are_node_names() {
        assert_eq!(node_name(7), "node-7");
        assert_eq!(node_server_name(7).to_str(), "node-7");
    }
}
