//! `strstore-server certs`: creates the cluster CA and the node and client certificates.
//!
//! Why a command of our own: every node must present a certificate that names
//! `strstore:node:<id>`,
//! is signed by the cluster CA, and may serve as both TLS server and client; getting names,
//! key usages and file modes right by hand is error-prone, and a mistake only shows up as
//! refused connections. Running it again with the same `--dir` reuses the CA, so it also adds
//! nodes and renews certificates (see README, "Security").
//!
//! Layout: [`issue`] decides what the certificates say; [`mod@write`] puts them on disk.

pub mod issue;
pub mod write;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;
use strstore_protocol::NodeId;

use crate::tls::files::{self, NodeFiles};
use crate::tls::identity::ClientRole;
use crate::tls::{material, ClientAuth, TlsSettings};
use issue::{Ca, Issued, Validity};
use write::{write_atomically, CERT_MODE, KEY_MODE};

/// Host names nodes get when `--hosts` is not given: enough for a cluster on one machine.
pub const DEFAULT_HOSTS: &str = "localhost,127.0.0.1,::1";

/// Flags of `strstore-server certs`.
#[derive(Args, Clone, Debug)]
pub struct CertsArgs {
    /// Directory to write the files to (created if missing). If it already holds ca.pem and
    /// ca-key.pem, that CA is reused: run the command again to add nodes or renew
    /// certificates, then restart the nodes or send them SIGHUP.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Ids of the nodes to create certificates for, comma-separated: `1,2,3` (none: only
    /// the client certificate).
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub nodes: Vec<NodeId>,

    /// The client certificate to write: `client` (the default) goes to client.pem and
    /// client-key.pem, any other NAME to client-NAME.pem and client-NAME-key.pem.
    #[arg(long, value_name = "NAME", default_value = issue::CLIENT_NAME)]
    pub client: String,

    /// What that client may do where nodes require client certificates
    /// (--client-auth required): `read` may get, len, status and inspect; `write` may also
    /// append and set.
    #[arg(long, value_enum, default_value_t = ClientRole::Write)]
    pub role: ClientRole,

    /// Host names and IP addresses the nodes are reached at, comma-separated. `NAME` goes into
    /// every node's certificate, `ID=NAME` only into node ID's. Clients check the name they
    /// dialled against it; peers check only the node's identity (the URI `strstore:node:<id>`,
    /// which every node gets and no host name can match), so hosts may be named `node-1`.
    #[arg(long, value_name = "[ID=]NAME,...", value_delimiter = ',', default_value = DEFAULT_HOSTS)]
    pub hosts: Vec<String>,

    /// Days the new node and client certificates stay valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
}

/// Why `certs` failed. Nothing half-made is left in use: each file is replaced whole.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{} exists but {} does not: a CA needs both to sign new certificates \
         (restore the missing file, or use another --dir for a new CA)",
        .present.display(), .missing.display()
    )]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("cannot use the CA in {}: {reason}", .dir.display())]
    BadCa { dir: PathBuf, reason: String },
    #[error("--hosts entry {entry:?}: {reason}")]
    BadHost { entry: String, reason: String },
    #[error("--client {0:?}: a client name is 1 to 64 letters, digits, '-', '_' or '.'")]
    BadClient(String),
    #[error("--nodes names node {0} twice")]
    DuplicateNode(NodeId),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Whether the CA was made by this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaOrigin {
    Created,
    Reused,
}

/// What `certs` did, for the operator.
#[derive(Debug)]
pub struct CertsReport {
    pub dir: PathBuf,
    pub ca: CaOrigin,
    pub written: Vec<PathBuf>,
    pub nodes: Vec<NodeId>,
}

impl std::fmt::Display for CertsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.dir.display();
        match self.ca {
            CaOrigin::Created => writeln!(f, "created a new cluster CA in {dir}")?,
            CaOrigin::Reused => writeln!(f, "reused the cluster CA in {dir}")?,
        }
        for path in &self.written {
            writeln!(f, "  wrote {}", path.display())?;
        }
        writeln!(f, "next:")?;
        writeln!(f, "  start node <id> with --tls-dir {dir}; on another machine it needs only")?;
        writeln!(f, "  ca.pem, node-<id>.pem and node-<id>-key.pem there (keep ca-key.pem away")?;
        writeln!(f, "  from the nodes). Running nodes pick up renewed files on SIGHUP.")?;
        write!(f, "  clients: strstore-cli --tls-ca {dir}/ca.pem")?;
        write!(f, " [--tls-cert {dir}/client.pem --tls-key {dir}/client-key.pem]")
    }
}

/// Creates (or reuses) the CA in `args.dir` and writes a certificate and key for every node
/// in `args.nodes` and one client certificate.
pub fn run(args: &CertsArgs) -> Result<CertsReport, CertsError> {
    let nodes = unique_nodes(&args.nodes)?;
    check_client_name(&args.client)?;
    let hosts = HostPlan::parse(&args.hosts)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|source| CertsError::Write { path: args.dir.clone(), source })?;
    let mut written = Vec::new();
    let (ca, origin) = open_or_create_ca(&args.dir, &mut written)?;
    let validity = Validity::days_from_now(i64::from(args.days));
    for &id in &nodes {
        let issued = issue::node_cert(&ca, id, &hosts.for_node(id), validity)?;
        save_pair(&args.dir, &files::node_cert(id), &files::node_key(id), &issued, &mut written)?;
        check_signed_by_ca(&args.dir, id)?;
    }
    let client = issue::client_cert(&ca, &args.client, args.role, validity)?;
    let (cert, key) = client_files(&args.client);
    save_pair(&args.dir, &cert, &key, &client, &mut written)?;
    Ok(CertsReport { dir: args.dir.clone(), ca: origin, written, nodes })
}

/// The files of client certificate `name`.
fn client_files(name: &str) -> (String, String) {
    if name == issue::CLIENT_NAME {
        (files::CLIENT_CERT.into(), files::CLIENT_KEY.into())
    } else {
        (format!("client-{name}.pem"), format!("client-{name}-key.pem"))
    }
}

fn check_client_name(name: &str) -> Result<(), CertsError> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        return Err(CertsError::BadClient(name.into()));
    }
    Ok(())
}

fn unique_nodes(nodes: &[NodeId]) -> Result<Vec<NodeId>, CertsError> {
    let mut seen = BTreeSet::new();
    for &id in nodes {
        if !seen.insert(id) {
            return Err(CertsError::DuplicateNode(id));
        }
    }
    Ok(nodes.to_vec())
}

fn open_or_create_ca(dir: &Path, written: &mut Vec<PathBuf>) -> Result<(Ca, CaOrigin), CertsError> {
    let (cert_path, key_path) = (dir.join(files::CA_CERT), dir.join(files::CA_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .map_err(|source| CertsError::Read { path: path.into(), source })
            };
            let ca = issue::load_ca(&read(&cert_path)?, &read(&key_path)?)
                .map_err(|e| CertsError::BadCa { dir: dir.into(), reason: e.to_string() })?;
            Ok((ca, CaOrigin::Reused))
        }
        (false, false) => {
            let (ca, issued) = issue::new_ca(Validity::days_from_now(issue::CA_VALIDITY_DAYS))?;
            save_pair(dir, files::CA_CERT, files::CA_KEY, &issued, written)?;
            Ok((ca, CaOrigin::Created))
        }
        (true, false) => Err(CertsError::HalfCa { present: cert_path, missing: key_path }),
        (false, true) => Err(CertsError::HalfCa { present: key_path, missing: cert_path }),
    }
}

/// Writes the key first, so that a reader that sees the new certificate also sees its key.
fn save_pair(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    issued: &Issued,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertsError> {
    for (name, pem, mode) in
        [(key_name, &issued.key_pem, KEY_MODE), (cert_name, &issued.cert_pem, CERT_MODE)]
    {
        let path = dir.join(name);
        write_atomically(&path, pem, mode)
            .map_err(|source| CertsError::Write { path: path.clone(), source })?;
        written.push(path);
    }
    Ok(())
}

/// Loads node `id`'s new files exactly as the node will: catches a ca-key.pem that does not
/// belong to ca.pem, which would otherwise make every certificate useless.
fn check_signed_by_ca(dir: &Path, id: NodeId) -> Result<(), CertsError> {
    let settings = TlsSettings {
        files: NodeFiles { dir: dir.into(), node: id },
        clients: Some(ClientAuth::Required),
        check_own_certificate: true,
    };
    material::load(&settings)
        .map(drop)
        .map_err(|e| CertsError::BadCa { dir: dir.into(), reason: e.to_string() })
}

/// Which host names go into which node's certificate.
struct HostPlan {
    every: Vec<String>,
    per_node: Vec<(NodeId, String)>,
}

impl HostPlan {
    fn parse(entries: &[String]) -> Result<Self, CertsError> {
        let mut plan = HostPlan { every: Vec::new(), per_node: Vec::new() };
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let bad =
                |reason: &str| CertsError::BadHost { entry: entry.into(), reason: reason.into() };
            let (node, name) = match entry.split_once('=') {
                Some((id, name)) => {
                    (Some(id.trim().parse().map_err(|_| bad("ID is not a node id"))?), name.trim())
                }
                None => (None, entry),
            };
            check_host(name).map_err(|reason| bad(&reason))?;
            match node {
                Some(id) => plan.per_node.push((id, name.to_string())),
                None => plan.every.push(name.to_string()),
            }
        }
        Ok(plan)
    }

    fn for_node(&self, id: NodeId) -> Vec<String> {
        let own = self.per_node.iter().filter(|(n, _)| *n == id).map(|(_, h)| h.clone());
        let mut hosts: Vec<String> = self.every.iter().cloned().chain(own).collect();
        hosts.dedup();
        hosts
    }
}

/// A host must be an IP address or a DNS name (no port, no scheme).
fn check_host(name: &str) -> Result<(), String> {
    if name.to_ascii_lowercase().starts_with("strstore:") {
        return Err(format!(
            "{name:?} looks like a node identity, not a host name: every node certificate gets \
             its identity (strstore:node:<id>) from --nodes"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    rustls::pki_types::DnsName::try_from(name)
        .map(drop)
        .map_err(|_| format!("{name:?} is neither an IP address nor a DNS name"))
}

/// In-memory CAs and certificates for tests of the TLS code.
#[cfg(test)]
pub mod testing {
    use rustls::pki_types::CertificateDer;
    use strstore_protocol::NodeId;

    use super::issue::{self, Ca, Issued, Validity};

    /// A fresh CA.
    pub struct TestCa {
        pub ca: Ca,
        pub cert: Issued,
    }

    impl TestCa {
        pub fn generate() -> Self {
            let (ca, cert) = issue::new_ca(Validity::days_from_now(30)).expect("test CA");
            Self { ca, cert }
        }
    }

    /// Node `id`'s certificate with extra `hosts`.
    pub fn node_cert(ca: &TestCa, id: NodeId, hosts: &[&str]) -> CertificateDer<'static> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        issue::node_cert(&ca.ca, id, &hosts, Validity::days_from_now(30)).expect("node cert").der
    }

    /// A client certificate.
    pub fn client_cert(ca: &TestCa) -> CertificateDer<'static> {
        let role = crate::tls::identity::ClientRole::Write;
        let issued = issue::client_cert(&ca.ca, "client", role, Validity::days_from_now(30));
        issued.expect("client cert").der
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn args(dir: &Path, nodes: &[NodeId], hosts: &[&str]) -> CertsArgs {
        CertsArgs {
            dir: dir.into(),
            nodes: nodes.to_vec(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            client: "client".into(),
            role: ClientRole::Write,
            days: 30,
        }
    }

    #[test]
    fn creates_a_ca_then_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let report = run(&args(dir.path(), &[1, 2], &["localhost", "1=10.0.0.1"])).unwrap();
        assert_eq!(report.ca, CaOrigin::Created);
        for name in [
            "ca.pem",
            "ca-key.pem",
            "node-1.pem",
            "node-1-key.pem",
            "node-2.pem",
            "client.pem",
            "client-key.pem",
        ] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        for key in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem", "client-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let report = run(&args(dir.path(), &[3], &[])).unwrap();
        assert_eq!(report.ca, CaOrigin::Reused);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before, "CA kept");
        // Node 3's certificate is signed by the same CA, so node 1 loads and trusts it.
        let files = NodeFiles { dir: dir.path().into(), node: 3 };
        material::load(&TlsSettings { files, clients: None, check_own_certificate: true }).unwrap();
    }

    #[test]
    fn a_ca_key_without_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        run(&args(dir.path(), &[1], &[])).unwrap();
        std::fs::remove_file(dir.path().join("ca.pem")).unwrap();
        let err = run(&args(dir.path(), &[1], &[])).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem exists but") && err.contains("ca.pem does not"), "{err}");
    }

    #[test]
    fn a_mismatched_ca_key_is_caught() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        run(&args(one.path(), &[1], &[])).unwrap();
        run(&args(two.path(), &[1], &[])).unwrap();
        std::fs::copy(two.path().join("ca-key.pem"), one.path().join("ca-key.pem")).unwrap();
        let err = run(&args(one.path(), &[2], &[])).unwrap_err().to_string();
        assert!(err.contains("cannot use the CA"), "{err}");
    }

    #[test]
    fn hosts_are_checked_and_split_per_node() {
        let plan = HostPlan::parse(&["a.example".into(), "2=10.0.0.2".into(), " ".into()]).unwrap();
        assert_eq!(plan.for_node(1), ["a.example"]);
        assert_eq!(plan.for_node(2), ["a.example", "10.0.0.2"]);
        for bad in ["host:7001", "x=name", "http://a", "strstore:node:2", "1=strstore:node:2"] {
            assert!(HostPlan::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(matches!(unique_nodes(&[1, 2, 1]), Err(CertsError::DuplicateNode(1))));
    }
}
