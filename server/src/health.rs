//! Health figures a member reports in its heartbeats, read from /proc and the data directory.
//! Every reading is best effort: a figure that cannot be read is reported as 0.

use std::path::{Path, PathBuf};

use strstore_protocol::Health;

/// Samples host and process health; keeps the previous CPU counters to compute utilisation
/// over the interval between two samples.
pub struct Sampler {
    data_dir: PathBuf,
    last_cpu: Option<(u64, u64)>,
}

impl Sampler {
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_path_buf(), last_cpu: None }
    }

    /// Takes a sample. It reads files (a walk of the data directory among them), so it runs
    /// off the engine's thread: a sample once took 285 ms while a 550 MB snapshot was being
    /// written. The engine fills in `log_len`.
    pub fn sample(&mut self) -> Health {
        Health {
            cpu_permille: self.cpu_permille(),
            mem_permille: mem_permille().unwrap_or(0),
            rss_bytes: rss_bytes().unwrap_or(0),
            disk_bytes: dir_size(&self.data_dir),
            ..Health::default()
        }
    }

    fn cpu_permille(&mut self) -> u32 {
        let Some((busy, total)) = cpu_counters() else { return 0 };
        let permille = match self.last_cpu {
            Some((b0, t0)) if total > t0 => ((busy - b0.min(busy)) * 1000 / (total - t0)) as u32,
            _ => 0,
        };
        self.last_cpu = Some((busy, total));
        permille
    }

    /// Samples every `every` on a blocking thread and sends each sample, until `stop` or
    /// until the receiver is gone.
    pub async fn run_every(
        mut self,
        every: std::time::Duration,
        to: tokio::sync::mpsc::Sender<crate::inbox::Input>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            let Ok((sampler, health)) = tokio::task::spawn_blocking(move || {
                let health = self.sample();
                (self, health)
            })
            .await
            else {
                return;
            };
            self = sampler;
            if to.send(crate::inbox::Input::Health(health)).await.is_err() {
                return;
            }
        }
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_counters() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn mem_permille() -> Option<u32> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some(((total - available.min(total)) * 1000 / total.max(1)) as u32)
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Bytes of the files under `dir` (not following links).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reads_this_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), [0u8; 1000]).unwrap();
        let mut s = Sampler::new(dir.path());
        let h = s.sample();
        assert!(h.rss_bytes > 0, "RSS of a running process is not zero");
        assert!(h.mem_permille <= 1000);
        assert_eq!(h.disk_bytes, 1000);
    }

    /// Samples reach the engine as inputs, taken on a blocking thread: the runtime's own
    /// thread stays free for the engine and its heartbeats however long a sample takes.
    #[tokio::test(flavor = "current_thread")]
    async fn samples_reach_the_inbox_from_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), [0u8; 10]).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let every = std::time::Duration::from_millis(10);
        let task = tokio::spawn(Sampler::new(dir.path()).run_every(every, tx, stop_rx));
        for _ in 0..2 {
            match rx.recv().await {
                Some(crate::inbox::Input::Health(h)) => assert_eq!(h.disk_bytes, 10),
                _ => panic!("expected a health sample"),
            }
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
