//! TLS for peer and client connections (the rule: a node speaks to peers only over mutual
//! TLS, and the id it claims must match its certificate, signed by the cluster CA).
//!
//! Layout:
//! - [`files`]: the files of a `--tls-dir` and their loading.
//! - [`material`]: rustls configurations built from them, after checking that our own
//!   certificate would pass our peers' checks.
//! - [`identity`]: the `strstore:node:<id>` URI in certificates and the check of a claimed
//!   id.
//! - [`sniff`]: telling TLS from plaintext on a port, and handshake errors in plain words.
//!
//! [`TlsState`] holds the current [`TlsMaterial`]; a reload (SIGHUP) swaps it whole, new
//! connections use the new one and open connections keep theirs.

pub mod files;
pub mod identity;
pub mod material;
mod settings;
pub mod sniff;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

pub use files::NodeFiles;
pub use material::{TlsError, TlsMaterial};
pub use settings::{ClientAuth, TlsSettings};

/// Longest a connection may take from accept (or connect) to an authenticated hello. Bounds
/// the tasks and sockets that silent or slow connections can hold.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's current TLS material, shared by every listener and dialler.
#[derive(Clone)]
pub struct TlsState {
    settings: Arc<TlsSettings>,
    current: Arc<RwLock<Arc<TlsMaterial>>>,
}

impl TlsState {
    /// Loads the material named by `settings`; fails if it is missing or unusable.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let material = material::load(&settings)?;
        log_loaded("TLS material loaded", &settings, &material);
        Ok(Self {
            settings: Arc::new(settings),
            current: Arc::new(RwLock::new(Arc::new(material))),
        })
    }

    /// The material new connections use now.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the files again and swaps the new material in. On error the old material stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let material = material::load(&self.settings)?;
        log_loaded("reloaded TLS material", &self.settings, &material);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
        Ok(())
    }

    /// Whether the client port speaks TLS.
    pub fn serves_clients(&self) -> bool {
        self.settings.clients.is_some()
    }
}

fn log_loaded(what: &str, settings: &TlsSettings, material: &TlsMaterial) {
    tracing::info!(
        cert = %settings.files.cert().display(),
        valid_until = %material.valid_until,
        clients = settings.client_mode(),
        "{what}"
    );
}
