//! Real processes on loopback: start `strstore-server` nodes in temporary directories, drive
//! them with the real `strstore-cli`, kill them with SIGKILL and restart them.
//!
//! Multi-node clusters run over mutual TLS like every deployment: the harness creates their
//! certificates with the real `strstore-server certs` command and starts every node with
//! `--tls-dir`. [`TestCluster::outsider`] starts an extra node with other certificates or
//! flags, to play a misconfigured or hostile peer.
//!
//! Binaries are built once per test process (`cargo build --bins`, same profile as the
//! tests), so `cargo test` alone is enough. Every child is killed when its handle drops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Directory holding the built binaries (target/debug or target/release).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test>-<hash>
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "strstore-server", "-p", "strstore-client", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the binaries");
        assert!(status.success(), "building strstore binaries failed");
        dir
    })
}

/// Path of one of the project's binaries.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Ports handed out for test nodes: below the kernel's ephemeral range (32768 and up on
/// Linux), so the source port of some process's outgoing connection cannot take a port
/// between the moment we check it and the moment the node binds it.
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A free loopback address for a node to listen on. Each call in this process returns a
/// different port (a counter through `TEST_PORTS`, starting at a place that depends on the
/// process id so that test binaries running side by side rarely meet); a port something
/// else already holds is skipped.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = TEST_PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// One node process.
pub struct TestNode {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    args: Vec<String>,
    /// `ulimit -n` the process starts under, if lowered (a common default is 1024).
    open_files_limit: Option<u64>,
    child: Option<Child>,
}

impl TestNode {
    /// A node not started yet.
    fn new(
        id: u64,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        data_dir: PathBuf,
        log_file: PathBuf,
        args: Vec<String>,
    ) -> Self {
        let open_files_limit = None;
        Self { id, client_addr, peer_addr, data_dir, log_file, args, open_files_limit, child: None }
    }

    /// Starts (or restarts) the process and waits until it accepts clients.
    pub fn start(&mut self) {
        self.start_process();
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(self.client_addr).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("n{} exited during start with {status}; log:\n{}", self.id, self.log());
            }
            assert!(Instant::now() < deadline, "n{} did not start listening in time", self.id);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_process(&mut self) {
        assert!(self.child.is_none(), "n{} is already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("node log file");
        let mut command = match self.open_files_limit {
            None => Command::new(bin("strstore-server")),
            // `ulimit -n` in sh lowers both the soft and the hard limit, as a machine whose
            // default is that low would have them.
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\"")]);
                sh.arg(bin("strstore-server"));
                sh
            }
        };
        let child = command
            .args(&self.args)
            .env("RUST_LOG", std::env::var("STRSTORE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning strstore-server");
        self.child = Some(child);
    }

    /// Starts the process and waits for it to exit by itself (a node that must refuse to
    /// start); panics if it is still running after `timeout` or starts serving clients.
    pub fn run_until_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.start_process();
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("just started");
            if let Some(status) = child.try_wait().expect("polling the node") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline || TcpStream::connect(self.client_addr).is_ok() {
                self.kill();
                panic!("n{} was expected to refuse to start; log:\n{}", self.id, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node under `ulimit -n limit` from its next start on.
    pub fn set_open_files_limit(&mut self, limit: u64) {
        self.open_files_limit = Some(limit);
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes, while running.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// File descriptors the process holds open, while running.
    pub fn open_fds(&self) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?.count())
    }

    /// Flags added to the node's command line from its next start on.
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// Flags removed from the node's command line from its next start on.
    pub fn remove_arg(&mut self, flag: &str) {
        self.args.retain(|a| a != flag);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().expect("waiting for the node")
    }

    /// The exit status, if the process has ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Waits until the node's log contains `needle`; false if it did not within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGHUP (the node reloads its TLS material).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    /// Sends the running node `signal` (a name `kill -s` takes: HUP, STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "sending SIG{signal} to n{}", self.id);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `strstore-server certs --dir DIR --nodes IDS EXTRA...`, the command operators use.
pub fn make_certs(dir: &Path, nodes: &[u64], extra: &[&str]) {
    let ids = nodes.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let out = Command::new(bin("strstore-server"))
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(["--nodes", &ids])
        .args(extra)
        .output()
        .expect("running strstore-server certs");
    assert!(
        out.status.success(),
        "strstore-server certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster of node processes sharing one temporary directory.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    /// The `--peers` value every node got.
    peers: String,
    /// The cluster's TLS material, when it has any (always with more than one node).
    tls_dir: Option<PathBuf>,
    dir: TempDir,
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) that list each other as peers.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// Like [`TestCluster::start`], with extra flags for every node. Clusters of more than
    /// one node get TLS material and `--tls-dir`, as they must.
    pub fn start_with(n: usize, extra: &[&str]) -> Self {
        Self::launch(n, n > 1, extra, |_| Vec::new())
    }

    /// Like [`TestCluster::start_with`], with TLS material even for a single node (for
    /// `--client-tls` tests).
    pub fn start_tls(n: usize, extra: &[&str]) -> Self {
        Self::launch(n, true, extra, |_| Vec::new())
    }

    /// Like [`TestCluster::start`], with extra flags for each node: `per_node(id)`.
    pub fn start_each(n: usize, per_node: impl Fn(u64) -> Vec<&'static str>) -> Self {
        Self::launch(n, n > 1, &[], per_node)
    }

    fn launch(
        n: usize,
        tls: bool,
        extra: &[&str],
        per_node: impl Fn(u64) -> Vec<&'static str>,
    ) -> Self {
        Self::configure(n, tls, extra, per_node).start_all()
    }

    /// The cluster's nodes, configured but not started.
    fn configure(
        n: usize,
        tls: bool,
        extra: &[&str],
        per_node: impl Fn(u64) -> Vec<&'static str>,
    ) -> Self {
        let dir = tempfile::Builder::new().prefix("strstore-test-").tempdir().expect("temp dir");
        let ids: Vec<u64> = (1..=n as u64).collect();
        let tls_dir = tls.then(|| dir.path().join("tls"));
        if let Some(tls_dir) = &tls_dir {
            make_certs(tls_dir, &ids, &[]);
        }
        let peer_addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let peers = peer_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, peer_addr) in peer_addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let client_addr = free_addr();
            let data_dir = dir.path().join(format!("n{id}"));
            let mut args = node_args(id, client_addr, *peer_addr, &data_dir);
            if n > 1 {
                args.extend(["--peers".to_string(), peers.clone()]);
            }
            if let Some(tls_dir) = &tls_dir {
                args.extend(["--tls-dir".to_string(), tls_dir.display().to_string()]);
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(per_node(id).into_iter().map(String::from));
            let log_file = dir.path().join(format!("n{id}.log"));
            nodes.push(TestNode::new(id, client_addr, *peer_addr, data_dir, log_file, args));
        }
        Self { nodes, peers, tls_dir, dir }
    }

    fn start_all(mut self) -> Self {
        for node in &mut self.nodes {
            node.start();
        }
        self
    }

    /// Like [`TestCluster::start`], with every node under `ulimit -n open_files`.
    pub fn start_with_open_files_limit(n: usize, open_files: u64) -> Self {
        let mut cluster = Self::configure(n, n > 1, &[], |_| Vec::new());
        for node in &mut cluster.nodes {
            node.set_open_files_limit(open_files);
        }
        cluster.start_all()
    }

    /// A node that is not one of the cluster's processes but uses its `--peers` list: it
    /// claims id `id`, loads its TLS material from `tls_dir`, and has its own ports and data
    /// directory. Not started yet. Tests use it to play a misconfigured or hostile node.
    pub fn outsider(&self, id: u64, tls_dir: &Path, extra: &[&str]) -> TestNode {
        let name = format!("outsider-{id}-{}", free_addr().port());
        let (client_addr, peer_addr) = (free_addr(), free_addr());
        let data_dir = self.dir.path().join(&name);
        let mut args: Vec<String> = [
            "--id",
            &id.to_string(),
            "--listen",
            &client_addr.to_string(),
            "--peer-listen",
            &peer_addr.to_string(),
            "--peers",
            &self.peers,
            "--data-dir",
            &data_dir.display().to_string(),
            "--tls-dir",
            &tls_dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log_file = self.dir.path().join(format!("{name}.log"));
        TestNode::new(id, client_addr, peer_addr, data_dir, log_file, args)
    }

    /// Flags that give node `id` the cluster's TLS material: `--tls-dir DIR`, after creating
    /// a certificate for `id` in it (from the cluster's CA) if it has none. For nodes added
    /// after the start, such as joiners. Empty for a cluster without TLS.
    pub fn node_tls_args(&self, id: u64) -> Vec<String> {
        let Some(dir) = &self.tls_dir else { return Vec::new() };
        if !dir.join(format!("node-{id}.pem")).exists() {
            make_certs(dir, &[id], &[]);
        }
        vec!["--tls-dir".to_string(), dir.display().to_string()]
    }

    /// The cluster's TLS directory (as written by `strstore-server certs`).
    pub fn tls_dir(&self) -> &Path {
        self.tls_dir.as_deref().expect("this cluster has no TLS material")
    }

    /// `strstore-cli` flags that make it speak TLS with the cluster's client certificate.
    pub fn client_tls_flags(&self) -> Vec<String> {
        let file = |name: &str| self.tls_dir().join(name).display().to_string();
        ["--tls-ca", &file("ca.pem"), "--tls-cert", &file("client.pem")]
            .into_iter()
            .map(String::from)
            .chain(["--tls-key".to_string(), file("client-key.pem")])
            .collect()
    }

    /// Starts one more node, not listed by the others, that joins the running cluster.
    pub fn add_joining_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let peer_addr = free_addr();
        let client_addr = free_addr();
        let mut peers: Vec<String> =
            self.nodes.iter().map(|n| format!("{}={}", n.id, n.peer_addr)).collect();
        peers.push(format!("{id}={peer_addr}"));
        let data_dir = self.dir.path().join(format!("n{id}"));
        let mut args = node_args(id, client_addr, peer_addr, &data_dir);
        args.extend(["--peers".into(), peers.join(","), "--join".into()]);
        // A joiner needs a certificate for its id from the cluster CA, like any peer.
        args.extend(self.node_tls_args(id));
        let log_file = self.dir.path().join(format!("n{id}.log"));
        let mut node = TestNode::new(id, client_addr, peer_addr, data_dir, log_file, args);
        node.start();
        self.nodes.push(node);
        id
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        &mut self.nodes[id as usize - 1]
    }

    /// Comma-separated client addresses of all nodes.
    pub fn addrs(&self) -> String {
        self.nodes.iter().map(|n| n.client_addr.to_string()).collect::<Vec<_>>().join(",")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `strstore-cli --addr <node> args...`.
    pub fn cli(&self, id: u64, args: &[&str]) -> Output {
        cli(&self.nodes[id as usize - 1].client_addr.to_string(), args)
    }

    /// Runs a CLI command at node `id` and returns its stdout; on failure panics with the
    /// CLI's error and every node's log.
    pub fn cli_ok(&self, id: u64, args: &[&str]) -> String {
        let out = self.cli(id, args);
        if !out.status.success() {
            panic!(
                "strstore-cli {args:?} at n{id} failed ({}): {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// All node logs, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("---- n{} ----\n{}", n.id, n.log())).collect()
    }
}

/// The flags every test node gets: its id, addresses and data directory.
fn node_args(id: u64, client: SocketAddr, peer: SocketAddr, data_dir: &Path) -> Vec<String> {
    vec![
        "--id".to_string(),
        id.to_string(),
        "--listen".into(),
        client.to_string(),
        "--peer-listen".into(),
        peer.to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]
}

/// Runs `strstore-cli --addr addr args...` and returns its output.
pub fn cli(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("strstore-cli"));
    cmd.arg("--addr").arg(addr);
    // Generous by default: a loaded CI machine must not turn a slow answer into a failure.
    if !args.contains(&"--timeout") {
        cmd.args(["--timeout", "60"]);
    }
    cmd.args(args).output().expect("running strstore-cli")
}

/// Stdout of a successful CLI run; panics with stderr otherwise.
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "strstore-cli failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}
