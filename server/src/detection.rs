//! The flags that say how fast a node is judged failed or slow, and how long a removed node
//! waits before it is added again: in milliseconds for the operator, in engine ticks inside.

use clap::Args;

use crate::replica;

/// Detection flags that contradict each other or the tick length.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDetection(String);

/// Failure and slowness detection (docs/protocol.md, "Heartbeats and failure detection").
#[derive(Args, Clone, Debug)]
pub struct DetectionArgs {
    /// Milliseconds between two heartbeats of a member to the master.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Fewest milliseconds of silence after which a peer counts as failed (a crashed member
    /// is removed, a crashed master replaced, this fast where heartbeats come steadily).
    /// The timeout adapts to the gaps seen between a peer's heartbeats, up to
    /// --max-failure-timeout-ms, so a loaded machine or a slow link does not cause false
    /// suspicions.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub failure_timeout_ms: u64,

    /// Most milliseconds of silence before a peer counts as failed, however irregular its
    /// heartbeats; also how long a view change may take before it is retried.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub max_failure_timeout_ms: u64,

    /// A member whose ack of an action comes this many milliseconds after every other
    /// member's lags; every write waits for every member, so it holds them all back
    /// (0: never remove a member for lagging).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub ack_lag_ms: u64,

    /// Milliseconds a member must lag without a break before the master removes it, or in all
    /// within three times as long (a node that stalls again and again). It is removed only while the view keeps a majority of the cluster's members (a 3-node
    /// cluster removes at most one member for lagging, a 5-node cluster two).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub ack_lag_for_ms: u64,

    /// Milliseconds a removed node must be heard steadily before it is added again, after a
    /// first removal; each removal in a row multiplies it by 4.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub rejoin_hold_down_ms: u64,

    /// The most the hold-down grows to.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub max_rejoin_hold_down_ms: u64,
}

impl DetectionArgs {
    /// Checks the flags against each other and the tick length.
    pub fn validate(&self, tick_ms: u64) -> Result<(), InvalidDetection> {
        let invalid = |msg: String| Err(InvalidDetection(msg));
        if self.heartbeat_ms < tick_ms {
            return invalid(format!(
                "--heartbeat-ms ({}) must be at least --tick-ms ({tick_ms})",
                self.heartbeat_ms
            ));
        }
        if self.failure_timeout_ms < 3 * self.heartbeat_ms {
            return invalid(format!(
                "--failure-timeout-ms ({}) must be at least 3 x --heartbeat-ms ({}): a peer \
                 that misses one or two heartbeats is not dead",
                self.failure_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.max_failure_timeout_ms < self.failure_timeout_ms {
            return invalid(format!(
                "--max-failure-timeout-ms ({}) must be at least --failure-timeout-ms ({})",
                self.max_failure_timeout_ms, self.failure_timeout_ms
            ));
        }
        if self.max_rejoin_hold_down_ms < self.rejoin_hold_down_ms {
            return invalid(format!(
                "--max-rejoin-hold-down-ms ({}) must be at least --rejoin-hold-down-ms ({})",
                self.max_rejoin_hold_down_ms, self.rejoin_hold_down_ms
            ));
        }
        Ok(())
    }

    /// Puts the settings, in ticks of `tick_ms`, into the engine's configuration.
    pub fn apply(&self, tick_ms: u64, cfg: &mut replica::Config) {
        let ticks = |ms: u64| ms.div_ceil(tick_ms.max(1));
        cfg.heartbeat_ticks = ticks(self.heartbeat_ms);
        cfg.min_failure_ticks = ticks(self.failure_timeout_ms);
        cfg.failure_ticks = ticks(self.max_failure_timeout_ms);
        cfg.ack_lag_ticks = ticks(self.ack_lag_ms);
        cfg.ack_lag_for_ticks = ticks(self.ack_lag_for_ms);
        cfg.hold_down_ticks = ticks(self.rejoin_hold_down_ms);
        cfg.max_hold_down_ticks = ticks(self.max_rejoin_hold_down_ms);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        detection: DetectionArgs,
    }

    fn flags(args: &[&str]) -> DetectionArgs {
        Flags::parse_from(std::iter::once("x").chain(args.iter().copied())).detection
    }

    #[test]
    fn defaults_become_ticks_and_bad_combinations_are_refused() {
        let mut cfg = replica::Config::new(1, vec![1, 2, 3]);
        let d = flags(&[]);
        d.validate(10).unwrap();
        d.apply(10, &mut cfg);
        assert_eq!((cfg.heartbeat_ticks, cfg.min_failure_ticks, cfg.failure_ticks), (10, 50, 200));
        assert_eq!((cfg.ack_lag_ticks, cfg.ack_lag_for_ticks), (5, 100));
        assert_eq!((cfg.hold_down_ticks, cfg.max_hold_down_ticks), (100, 3000));
        let err = flags(&["--failure-timeout-ms", "200"]).validate(10).unwrap_err();
        assert!(err.to_string().contains("3 x --heartbeat-ms"), "{err}");
        let err = flags(&["--max-failure-timeout-ms", "400"]).validate(10).unwrap_err();
        assert!(err.to_string().contains("at least --failure-timeout-ms"), "{err}");
        assert!(flags(&["--heartbeat-ms", "5"]).validate(10).is_err());
    }
}
