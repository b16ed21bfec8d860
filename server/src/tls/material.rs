//! Building rustls configurations from a node's TLS files, after checking that the files
//! belong together: a node that would present a certificate its peers must refuse (expired,
//! for another node, from another CA, with a key of another certificate) refuses to start, or
//! keeps its old material on a reload, and says which file is wrong.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::files::{NodeFiles, Pems, TlsFileError};
use super::identity::{node_server_name, NodeServerVerifier};
use super::settings::{ClientAuth, TlsSettings};

/// Only TLS 1.3: one round trip for the handshake, no legacy cipher suites to configure, and
/// every peer is a strstore node of the same release anyway.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Why TLS material could not be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] TlsFileError),
    #[error("{}: {reason}", .path.display())]
    Invalid { path: std::path::PathBuf, reason: String },
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// Everything a node needs to open and accept TLS connections. Immutable: a reload builds a
/// new one, and connections keep the one they started with.
pub struct TlsMaterial {
    /// Accepts peers: requires a client certificate signed by the cluster CA.
    pub peer_acceptor: TlsAcceptor,
    /// Dials peers: presents our certificate and verifies that theirs names
    /// `strstore:node:<peer id>`.
    pub peer_connector: TlsConnector,
    /// Serves clients, when `--client-tls` is on.
    pub client_acceptor: Option<TlsAcceptor>,
    /// End of our certificate's validity (RFC 3339), for the log.
    pub valid_until: String,
}

/// Loads and checks node `settings.files.node`'s material.
pub fn load(settings: &TlsSettings) -> Result<TlsMaterial, TlsError> {
    let (files, clients) = (&settings.files, settings.clients);
    let Pems { ca, chain, key } = files.read()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = root_store(&files.ca(), ca)?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    if settings.check_own_certificate {
        check_own_certificate(files, &roots, &provider, &client_verifier, &chain)?;
    }
    let key_mismatch = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Invalid {
            path: files.key(),
            reason: format!("is not the private key of {}", files.cert().display()),
        },
        other => TlsError::Invalid { path: files.key(), reason: other.to_string() },
    };
    let server_config = |verifier: Option<Arc<dyn ClientCertVerifier>>| {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        builder.with_single_cert(chain.clone(), key.clone_key()).map_err(key_mismatch)
    };
    let peer_server = server_config(Some(client_verifier.clone()))?;
    let client_server = match clients {
        None => None,
        Some(ClientAuth::Required) => Some(server_config(Some(client_verifier))?),
        Some(ClientAuth::None) => Some(server_config(None)?),
    };
    let node_verifier = Arc::new(NodeServerVerifier::new(roots, provider.clone()));
    let peer_client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(node_verifier)
        .with_client_auth_cert(chain.clone(), key)
        .map_err(key_mismatch)?;
    Ok(TlsMaterial {
        peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
        peer_connector: TlsConnector::from(Arc::new(peer_client)),
        client_acceptor: client_server.map(|c| TlsAcceptor::from(Arc::new(c))),
        valid_until: valid_until(&chain[0]),
    })
}

fn root_store(
    path: &Path,
    ca: Vec<CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.into(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Verifies our own chain exactly as a peer will, in both roles: as a server certificate for
/// `strstore:node:<id>` and as a client certificate. Catching it here turns "every peer refuses
/// me" into one clear startup error.
fn check_own_certificate(
    files: &NodeFiles,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    client_verifier: &Arc<dyn ClientCertVerifier>,
    chain: &[CertificateDer<'static>],
) -> Result<(), TlsError> {
    let server_verifier = NodeServerVerifier::new(roots.clone(), provider.clone());
    let now = UnixTime::now();
    let (leaf, intermediates) = chain.split_first().expect("PEM loading ensures one certificate");
    let name = node_server_name(files.node);
    server_verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(drop)
        .and_then(|()| client_verifier.verify_client_cert(leaf, intermediates, now).map(drop))
        .map_err(|e| TlsError::Invalid { path: files.cert(), reason: explain_own(files, e) })
}

fn explain_own(files: &NodeFiles, error: rustls::Error) -> String {
    let renew = format!(
        "renew it with `strstore-server certs --dir {} --nodes {}`",
        files.dir.display(),
        files.node
    );
    let rustls::Error::InvalidCertificate(cert_error) = &error else {
        return format!("cannot be used: {error}");
    };
    match cert_error {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "is not signed by a CA in {} (was it made for another cluster?)",
            files.ca().display()
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("has expired ({error}); {renew}")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("is not valid yet ({error}); is this machine's clock right?")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "is not a certificate for node {} (it lacks the identity {}; certificates made \
                 before identities had a field of their own name nodes differently): {renew}",
                files.node,
                super::identity::node_uri(files.node)
            )
        }
        _ => format!("cannot be used: {error}"),
    }
}

/// The certificate's notAfter as RFC 3339, or "unknown" if it does not parse (rustls accepted
/// it, so that would be a parser disagreement, not worth refusing over).
fn valid_until(cert: &CertificateDer<'_>) -> String {
    use time::format_description::well_known::Rfc3339;
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .and_then(|(_, parsed)| parsed.validity().not_after.to_datetime().format(&Rfc3339).ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::issue::{self, Validity};
    use crate::tls::files;
    use time::{Duration, OffsetDateTime};

    /// Writes a CA and node 1's files with `validity` into a temporary directory.
    fn node_files(validity: Validity) -> (tempfile::TempDir, TlsSettings) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_files) = issue::new_ca(Validity::days_from_now(30)).unwrap();
        let node = issue::node_cert(&ca, 1, &[], validity).unwrap();
        std::fs::write(dir.path().join(files::CA_CERT), ca_files.cert_pem).unwrap();
        std::fs::write(dir.path().join(files::node_cert(1)), node.cert_pem).unwrap();
        std::fs::write(dir.path().join(files::node_key(1)), node.key_pem).unwrap();
        let files = NodeFiles { dir: dir.path().into(), node: 1 };
        (dir, TlsSettings { files, clients: None, check_own_certificate: true })
    }

    #[test]
    fn good_material_loads() {
        let (_dir, settings) = node_files(Validity::days_from_now(30));
        let material = load(&settings).unwrap();
        assert!(material.client_acceptor.is_none());
        assert!(
            material.valid_until.starts_with(&OffsetDateTime::now_utc().year().to_string())
                || material
                    .valid_until
                    .starts_with(&(OffsetDateTime::now_utc().year() + 1).to_string())
        );
    }

    #[test]
    fn an_expired_own_certificate_is_refused_with_the_renew_command() {
        let now = OffsetDateTime::now_utc();
        let expired =
            Validity { not_before: now - Duration::days(10), not_after: now - Duration::days(1) };
        let (_dir, settings) = node_files(expired);
        let err = load(&settings).err().unwrap().to_string();
        assert!(err.contains("node-1.pem: has expired"), "{err}");
        assert!(err.contains("strstore-server certs --dir"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (dir, settings) = node_files(Validity::days_from_now(30));
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(dir.path().join(files::node_key(1)), other).unwrap();
        let err = load(&settings).err().unwrap().to_string();
        assert!(err.contains("node-1-key.pem: is not the private key of"), "{err}");
    }

    #[test]
    fn a_certificate_for_another_node_is_refused_unless_checks_are_off() {
        let (dir, mut settings) = node_files(Validity::days_from_now(30));
        settings.files = NodeFiles { dir: dir.path().into(), node: 2 };
        for name in [files::node_cert(1), files::node_key(1)] {
            let to = name.replace("node-1", "node-2");
            std::fs::copy(dir.path().join(&name), dir.path().join(to)).unwrap();
        }
        let err = load(&settings).err().unwrap().to_string();
        assert!(err.contains("is not a certificate for node 2"), "{err}");
        settings.check_own_certificate = false;
        assert!(load(&settings).is_ok(), "tests may play a misconfigured node");
    }
}
