//! The clients: each one a closed loop (one op at a time) with its own identity, its home
//! node first in its address list, choosing `append` of a fresh token most of the time, `get`
//! often and `set` rarely. Every op goes into the history with its invoke and completion time
//! and what the client learned: `Ok`, `Failed` only when a node said the op was not applied,
//! and `Unknown` for everything else (a timeout never counts as failed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strstore_client::{Client, ClientConfig, ClientError, Op as ClientOp, Response};
use tokio::time::Instant;

use super::backend::{client_config, NodeInfo};
use super::Args;
use crate::checker::{token, History, OkValue, OpKind, Outcome};

/// One `set` in this many ops: rare, so the string stays a long token sequence that the
/// direct checks can explain, but present, so that `set` is tested under faults too (and
/// keeps the string, and so every `get` reply, from growing without bound).
const SET_ONE_IN: u32 = 200;
/// Percentage of `get`s.
const GET_PERCENT: u32 = 20;

/// What the clients need to know.
#[derive(Clone, Debug)]
pub struct Config {
    clients: u64,
    nodes: Vec<NodeInfo>,
    op_timeout: Duration,
    think: Duration,
    seed: u64,
}

impl Config {
    pub fn new(args: &Args, nodes: &[NodeInfo]) -> Self {
        Self {
            clients: args.clients,
            nodes: nodes.to_vec(),
            op_timeout: Duration::from_secs(args.op_timeout),
            think: Duration::from_millis(args.think_ms),
            seed: args.seed,
        }
    }

    /// Client `c` (from 1) talks to its home node first, then the others in order.
    fn client_config(&self, c: u64) -> ClientConfig {
        let n = self.nodes.len();
        let home = (c as usize - 1) % n;
        let order: Vec<&NodeInfo> = (0..n).map(|i| &self.nodes[(home + i) % n]).collect();
        let attempt = (self.op_timeout / 2).max(Duration::from_secs(1));
        client_config(&order, self.op_timeout, attempt)
    }
}

/// Runs every client until `until` (or `stop`) and returns the merged history, times in
/// nanoseconds since `start`.
pub async fn run(
    config: Config,
    start: std::time::Instant,
    until: std::time::Instant,
    stop: Arc<AtomicBool>,
) -> History {
    let history = Arc::new(Mutex::new(History::new()));
    let start = Instant::from_std(start);
    let until = Instant::from_std(until);
    let tasks: Vec<_> = (1..=config.clients)
        .map(|c| {
            let (config, history, stop) = (config.clone(), history.clone(), stop.clone());
            tokio::spawn(client_loop(config, c, start, until, history, stop))
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            eprintln!("chaos: a client task failed: {e}");
        }
    }
    let history = history.lock().expect("history lock").clone();
    history
}

async fn client_loop(
    config: Config,
    c: u64,
    start: Instant,
    until: Instant,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(c));
    let mut client = match Client::new(config.client_config(c)) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("chaos: client {c} cannot start: {e}");
            return;
        }
    };
    let nanos = |at: Instant| at.duration_since(start).as_nanos() as u64;
    let mut next_token = 1;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        let (kind, op) = if rng.gen_range(0..SET_ONE_IN) == 0 {
            let value = token(c, next_token);
            next_token += 1;
            (OpKind::Set(value.clone()), ClientOp::Set(value.into()))
        } else if rng.gen_range(0..100) < GET_PERCENT {
            (OpKind::Get, ClientOp::Get)
        } else {
            let value = token(c, next_token);
            next_token += 1;
            (OpKind::Append(value.clone()), ClientOp::Append(value.into()))
        };
        let invoke = Instant::now();
        let index = history.lock().expect("history lock").invoke(c, kind, nanos(invoke), None);
        let result = client.execute(op).await;
        let complete = nanos(Instant::now());
        let outcome = outcome(result);
        {
            let mut history = history.lock().expect("history lock");
            history.complete(index, complete, outcome);
            history.ops[index].node = client.connected_node();
        }
        tokio::time::sleep(config.think).await;
    }
}

/// What the client learned, in the checker's terms.
fn outcome(result: Result<Response, ClientError>) -> Outcome {
    match result {
        Ok(Response::Len(len)) => Outcome::Ok(OkValue::Len(len)),
        Ok(Response::Value(value)) => Outcome::Ok(OkValue::Value(value.to_vec())),
        Err(e) if e.is_outcome_unknown() => Outcome::Unknown,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
