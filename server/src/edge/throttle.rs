//! Warnings about connections, rate-limited: an attack of thousands of connections must not
//! write thousands of lines. Each interval logs its first few events in full and the rest as
//! one summary line with counts per kind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Length of one throttling interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Events logged in full per interval before the rest are only counted.
pub const FULL_LINES_PER_INTERVAL: u32 = 5;

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

/// Throttled warnings of one listener (`what` names it in the summary: "client connections").
#[derive(Clone)]
pub struct Throttle {
    what: &'static str,
    window: Arc<Mutex<Window>>,
}

impl Throttle {
    pub fn new(what: &'static str) -> Self {
        Self { what, window: Arc::default() }
    }

    /// Logs `message()` at warn unless this interval already logged its share; then counts it
    /// under `kind`.
    pub fn warn(&self, kind: &'static str, message: impl FnOnce() -> String) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if window.started.is_none_or(|s| now.duration_since(s) >= INTERVAL) {
            self.summarise(&mut window);
            *window = Window { started: Some(now), ..Window::default() };
        }
        if window.logged < FULL_LINES_PER_INTERVAL {
            window.logged += 1;
            let message = message();
            tracing::warn!("{message}");
        } else {
            *window.suppressed.entry(kind).or_default() += 1;
        }
    }

    /// Logs the counts of the interval that ended, if any event was only counted.
    fn summarise(&self, window: &mut Window) {
        if window.suppressed.is_empty() {
            return;
        }
        let total: u64 = window.suppressed.values().sum();
        let counts: Vec<String> =
            window.suppressed.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        tracing::warn!(
            "{total} more events on {} in the last {}s, not logged one by one ({})",
            self.what,
            INTERVAL.as_secs(),
            counts.join(", ")
        );
        window.suppressed.clear();
    }

    /// Logs each interval's summary when it ends, even if no later event comes, until `stop`.
    pub async fn summarise_until(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => break,
            }
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            if window.started.is_some_and(|s| s.elapsed() >= INTERVAL) {
                self.summarise(&mut window);
                *window = Window::default();
            }
        }
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        self.summarise(&mut window);
    }

    /// Events only counted so far in this interval (for tests).
    #[cfg(test)]
    fn suppressed(&self) -> u64 {
        self.window.lock().unwrap().suppressed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_events_of_an_interval_are_logged_in_full() {
        let throttle = Throttle::new("test connections");
        let mut built = 0;
        for _ in 0..100 {
            throttle.warn("slow", || {
                built += 1;
                "one".into()
            });
        }
        assert_eq!(built, FULL_LINES_PER_INTERVAL);
        assert_eq!(throttle.suppressed(), 100 - u64::from(FULL_LINES_PER_INTERVAL));
    }
}
