//! The files of a TLS directory, as `strstore-server certs` writes them and `--tls-dir` reads
//! them, and the PEM loading with errors that name the file and say what to do.
//!
//! ```text
//! ca.pem               cluster CA certificate(s): every node and client trusts these
//! ca-key.pem           CA private key (0600): only `certs` needs it; keep it off the nodes
//! node-<id>.pem        node <id>'s certificate (URI SAN strstore:node:<id> plus its host names)
//! node-<id>-key.pem    node <id>'s private key (0600)
//! client.pem           a client certificate for strstore-cli and strstore-bench
//! client-key.pem       its private key (0600)
//! ```

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strstore_protocol::NodeId;

/// CA certificate file name. It may hold several certificates (old and new CA during a CA
/// rotation); all of them are trusted.
pub const CA_CERT: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY: &str = "ca-key.pem";
/// Client certificate file name.
pub const CLIENT_CERT: &str = "client.pem";
/// Client private key file name.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Certificate file name of node `id`.
pub fn node_cert(id: NodeId) -> String {
    format!("node-{id}.pem")
}

/// Private key file name of node `id`.
pub fn node_key(id: NodeId) -> String {
    format!("node-{id}-key.pem")
}

/// Why TLS material could not be loaded. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error(
        "{path} does not exist; create the TLS material with \
         `strstore-server certs --dir {dir} --nodes {node}` (it reuses the CA already in {dir})",
        path = .path.display(), dir = .dir.display()
    )]
    Missing { path: PathBuf, dir: PathBuf, node: NodeId },
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} holds no PEM {what}", .path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("{}: not a valid PEM {what}: {reason}", .path.display())]
    Pem { path: PathBuf, what: &'static str, reason: String },
}

/// The PEM files node `node` loads from `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    pub dir: PathBuf,
    pub node: NodeId,
}

impl NodeFiles {
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(node_cert(self.node))
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join(node_key(self.node))
    }

    /// Reads the CA certificates, this node's chain (leaf first) and its private key.
    pub fn read(&self) -> Result<Pems, TlsFileError> {
        Ok(Pems {
            ca: self.certs(&self.ca(), "CA certificate")?,
            chain: self.certs(&self.cert(), "certificate")?,
            key: self.private_key(&self.key())?,
        })
    }

    fn certs(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
        let bytes = self.bytes(path)?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsFileError::Pem { path: path.into(), what, reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsFileError::Empty { path: path.into(), what });
        }
        Ok(certs)
    }

    fn private_key(&self, path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
        let bytes = self.bytes(path)?;
        let what = "private key";
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                TlsFileError::Empty { path: path.into(), what }
            }
            other => TlsFileError::Pem { path: path.into(), what, reason: other.to_string() },
        })
    }

    fn bytes(&self, path: &Path) -> Result<Vec<u8>, TlsFileError> {
        std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                TlsFileError::Missing { path: path.into(), dir: self.dir.clone(), node: self.node }
            }
            _ => TlsFileError::Read { path: path.into(), source },
        })
    }
}

/// Parsed contents of a node's TLS files.
pub struct Pems {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_say_how_to_create_them() {
        let dir = tempfile::tempdir().unwrap();
        let files = NodeFiles { dir: dir.path().into(), node: 3 };
        let err = files.read().err().unwrap().to_string();
        assert!(err.contains("ca.pem does not exist"), "{err}");
        assert!(err.contains("strstore-server certs --dir"), "{err}");
        assert!(err.contains("--nodes 3"), "{err}");
    }

    #[test]
    fn garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_CERT), "not pem").unwrap();
        let files = NodeFiles { dir: dir.path().into(), node: 1 };
        let err = files.read().err().unwrap().to_string();
        assert!(err.contains("ca.pem holds no PEM CA certificate"), "{err}");
    }
}
