//! How a node is told to use TLS: its files and what it asks of clients.

use super::files::NodeFiles;

/// Whether clients must present a certificate on a TLS client port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Any client may connect; the connection is still encrypted and the node authenticated.
    #[default]
    None,
    /// Clients must present a certificate signed by the cluster CA.
    Required,
}

/// Where a node's TLS material comes from and how it serves clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub files: NodeFiles,
    /// `None`: the client port stays plaintext; `Some`: TLS with this client authentication.
    pub clients: Option<ClientAuth>,
    /// Refuse material whose certificate our peers would refuse (expired, for another node,
    /// from another CA). Only tests turn it off, to play a misconfigured or hostile node.
    pub check_own_certificate: bool,
}

impl TlsSettings {
    /// How the client port is configured, in words for the log.
    pub(super) fn client_mode(&self) -> &'static str {
        match self.clients {
            None => "plaintext",
            Some(ClientAuth::None) => "TLS",
            Some(ClientAuth::Required) => "TLS, client certificates required",
        }
    }
}
