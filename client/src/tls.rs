//! TLS towards the nodes: the files a client is configured with, the rustls configuration
//! built from them, and failures explained in terms of what to change.
//!
//! A node's certificate is checked against the cluster CA (`--tls-ca`) for the host name or
//! IP address the client dialled, so that name must be in the node's certificate (see
//! `strstore-server certs --hosts`). A client certificate is needed only for nodes started
//! with `--client-auth required`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// Environment variables of the TLS flags, so a shell can set them once per cluster.
pub const TLS_CA_ENV: &str = "STRSTORE_TLS_CA";
pub const TLS_CERT_ENV: &str = "STRSTORE_TLS_CERT";
pub const TLS_KEY_ENV: &str = "STRSTORE_TLS_KEY";

/// Where a client finds its TLS material. Setting it turns TLS on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that sign the nodes' certificates: the cluster's `ca.pem`.
    pub ca: PathBuf,
    /// Client certificate and its key (`client.pem`, `client-key.pem`), for nodes that
    /// require one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The TLS flags `strstore-cli` and `strstore-bench` share.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// CA certificate to verify the nodes with (the cluster's ca.pem). Turns TLS on; the
    /// nodes must run with --client-tls.
    #[arg(long, global = true, env = TLS_CA_ENV, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (client.pem), for nodes started with --client-auth required.
    #[arg(long, global = true, env = TLS_CERT_ENV, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key of --tls-cert (client-key.pem).
    #[arg(long, global = true, env = TLS_KEY_ENV, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files named by the flags, or `None` for plaintext.
    pub fn files(&self) -> Result<Option<TlsFiles>, ClientError> {
        let identity = self.tls_cert.clone().zip(self.tls_key.clone());
        match &self.tls_ca {
            Some(ca) => Ok(Some(TlsFiles { ca: ca.clone(), identity })),
            None if identity.is_some() => Err(ClientError::Config(
                "--tls-cert and --tls-key need --tls-ca (the cluster's ca.pem) too".into(),
            )),
            None => Ok(None),
        }
    }
}

/// Builds the connector: TLS 1.3 with the ring provider, trusting only the CA in `files`.
pub(crate) fn connector(files: &TlsFiles) -> Result<TlsConnector, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&files.ca, "CA certificate")? {
        roots.add(cert).map_err(|e| file_error(&files.ca, format!("not a usable CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots);
    let config = match &files.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert, "certificate")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_error(key, format!("does not fit {}: {e}", cert.display())))?
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, format!("cannot read a PEM {what}: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, format!("holds no PEM {what}")));
    }
    Ok(certs)
}

fn file_error(path: &Path, why: String) -> ClientError {
    ClientError::Config(format!("{}: {why}", path.display()))
}

/// The name a node's certificate must carry when we dial `addr` (`HOST:PORT`): the host, as
/// an IP address or a DNS name.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, ClientError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| {
        ClientError::Config(format!("{host:?} in {addr:?} is not a host name TLS can verify"))
    })
}

/// A TLS problem with one node: a mismatch of settings, not a passing fault, so the client
/// reports it at once instead of retrying until its deadline.
#[derive(Debug)]
pub(crate) enum TlsFailure {
    /// We spoke plaintext and the node answered with TLS bytes.
    NodeSpeaksTls,
    /// rustls failed: in the handshake, or on a record (an alert) right after it.
    Tls(rustls::Error),
}

impl TlsFailure {
    /// What went wrong with the node at `addr`, and what to change.
    pub(crate) fn describe(&self, addr: &str) -> String {
        let node = format!("the node at {addr}");
        let TlsFailure::Tls(error) = self else {
            return format!(
                "{node} speaks TLS; pass --tls-ca (and --tls-cert/--tls-key if it requires \
                 client certificates)"
            );
        };
        match error {
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
                "{node} requires a client certificate: pass --tls-cert and --tls-key \
                 (e.g. client.pem and client-key.pem from `strstore-server certs`)"
            ),
            rustls::Error::AlertReceived(alert) => format!(
                "{node} refused the TLS connection (alert {alert:?}): is our client \
                 certificate signed by the cluster CA, and still valid?"
            ),
            rustls::Error::InvalidCertificate(cert) => {
                describe_node_certificate(&node, cert, error)
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!(
                    "{node} does not seem to speak TLS (it answered the handshake with \
                     something else): drop --tls-ca, or start the node with --client-tls"
                )
            }
            other => format!("TLS with {node} failed: {other}"),
        }
    }
}

fn describe_node_certificate(node: &str, cert: &CertificateError, full: &rustls::Error) -> String {
    match cert {
        CertificateError::UnknownIssuer => {
            format!("the certificate of {node} is not signed by the CA in --tls-ca")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the certificate of {node} does not name the host we dialled ({full}); dial a \
                 name it has, or add the host with `strstore-server certs --hosts`"
            )
        }
        _ => format!("the certificate of {node} was refused: {full}"),
    }
}

/// The rustls error inside an I/O error, if TLS is what failed.
pub(crate) fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Whether `bytes` (what a node sent where we expected a frame) start a TLS record: a
/// handshake (0x16) or an alert (0x15), then a 0x03 version byte. A frame's first byte is
/// the top byte of its length, which is never that large.
pub(crate) fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert_eq!(server_name("127.0.0.1:7379").unwrap().to_str(), "127.0.0.1");
        assert_eq!(server_name("[::1]:7379").unwrap().to_str(), "::1");
        assert_eq!(server_name("node-1.example:1").unwrap().to_str(), "node-1.example");
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn failures_say_what_to_change() {
        let speaks = TlsFailure::NodeSpeaksTls.describe("h:1");
        assert!(speaks.starts_with("the node at h:1 speaks TLS; pass --tls-ca"), "{speaks}");
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let needs_cert = TlsFailure::Tls(alert).describe("h:1");
        assert!(needs_cert.contains("requires a client certificate"), "{needs_cert}");
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(TlsFailure::Tls(plain).describe("h:1").contains("does not seem to speak TLS"));
    }

    #[test]
    fn tls_records_are_told_from_frames() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0, 2, 2, 10]));
        assert!(!looks_like_tls(&[0, 0, 0, 5]));
        assert!(!looks_like_tls(&[0x15]));
    }

    #[test]
    fn a_client_certificate_needs_a_ca() {
        let args = TlsArgs { tls_ca: None, tls_cert: Some("c".into()), tls_key: Some("k".into()) };
        assert!(args.files().unwrap_err().to_string().contains("need --tls-ca"));
        assert_eq!(TlsArgs::default().files().unwrap(), None);
    }
}
