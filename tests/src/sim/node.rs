//! A simulated node: a replica, its log (the real write-ahead file over a file system in
//! memory) and the messages waiting for a sync.

use std::collections::VecDeque;

use strstore_protocol::{Envelope, Request, Timestamp, View};
use strstore_server::log::LogStore;
use strstore_server::replica::{self, ClientReply, Replica, WaiterId};

use super::log::SimLog;

/// What one step of a node sends out.
#[derive(Default)]
pub struct Output {
    pub messages: Vec<Envelope>,
    pub replies: Vec<ClientReply>,
    /// Write actions applied, in order.
    pub applied: Vec<Timestamp>,
    /// Views entered.
    pub views: Vec<View>,
}

pub struct SimNode {
    cfg: replica::Config,
    /// `None` while crashed.
    pub replica: Option<Replica>,
    log: SimLog,
    /// After-sync messages waiting for the log to become durable, in order.
    unsynced: Vec<Envelope>,
    inbox: VecDeque<Envelope>,
    /// Step at which a crashed node restarts.
    pub down_until: u64,
    /// Position in the global applied order: how many actions this node's state reflects.
    pub position: usize,
    /// The replay base the position was last aligned to.
    pub base: Timestamp,
    /// Its data was destroyed and it restarted repaired: it must rejoin as a fresh
    /// incarnation (the `REJOIN` marker of a real node), until it holds a snapshot.
    fresh: bool,
}

impl SimNode {
    pub fn new(cfg: replica::Config) -> Self {
        let replica = Replica::new(cfg.clone(), Default::default());
        Self {
            cfg,
            replica: Some(replica),
            log: SimLog::default(),
            unsynced: Vec::new(),
            inbox: VecDeque::new(),
            down_until: 0,
            position: 0,
            base: Timestamp::default(),
            fresh: false,
        }
    }

    /// Repaired and not yet durably back in a view: a crash now leaves it fresh again.
    pub fn rejoining(&self) -> bool {
        self.fresh
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    pub fn deliver(&mut self, env: Envelope) {
        if self.is_up() {
            self.inbox.push_back(env);
        }
    }

    pub fn client_request(&mut self, waiter: WaiterId, req: Request) {
        if let Some(r) = &mut self.replica {
            r.client_request(waiter, req);
        }
    }

    /// Feeds queued messages and a tick to the replica, logs its records and, if `sync`,
    /// makes the log durable and releases the messages that waited for it.
    pub fn advance(&mut self, tick: bool, sync: bool) -> Result<Output, String> {
        let mut out = Output::default();
        let Some(r) = &mut self.replica else { return Ok(out) };
        for env in self.inbox.drain(..) {
            r.step(env);
        }
        if tick {
            r.tick();
        }
        r.propose();
        self.collect(&mut out)?;
        if sync && !self.unsynced.is_empty() {
            self.log.sync().map_err(|e| e.to_string())?;
            let me = self.cfg.id();
            let r = self.replica.as_mut().expect("up");
            // The view it entered logged a snapshot before this sync: the rejoin is durable
            // (a real node removes its REJOIN marker then).
            self.fresh &= !(r.is_member() && r.view().epoch > 0);
            for env in std::mem::take(&mut self.unsynced) {
                if env.to == me {
                    r.step(env);
                } else {
                    out.messages.push(env);
                }
            }
            r.propose();
            self.collect(&mut out)?;
        }
        Ok(out)
    }

    fn collect(&mut self, out: &mut Output) -> Result<(), String> {
        let ready = self.replica.as_mut().expect("up").take_ready();
        self.log.append(&ready.log).map_err(|e| e.to_string())?;
        self.unsynced.extend(ready.after_sync);
        out.messages.extend(ready.messages);
        out.replies.extend(ready.replies);
        out.applied.extend(ready.applied);
        out.views.extend(ready.view_changed);
        Ok(())
    }

    /// Stops the node as a power cut would: unsynced log writes (but the first `torn` share
    /// of the one under way) and queued messages are lost. With `damaged`, the whole log is,
    /// as when a node finds its data damaged and `--repair` moves it aside.
    pub fn crash(&mut self, until: u64, damaged: bool, torn: f64) {
        self.replica = None;
        self.log.power_cut(torn);
        if damaged {
            self.log = SimLog::default();
            self.fresh = true;
        }
        self.unsynced.clear();
        self.inbox.clear();
        self.down_until = until;
    }

    /// Starts the node again from what its log kept; returns what the replay applied.
    pub fn restart(&mut self) -> Vec<Timestamp> {
        let restored = self.log.load().expect("memory log loads");
        self.fresh &= restored.snapshot.is_none();
        let mut cfg = self.cfg.clone();
        if self.fresh {
            // As `NodeConfig::replica_config` does for a repaired node.
            cfg.fresh_incarnation = true;
            cfg.start_outside_views();
        }
        let mut replica = Replica::new(cfg, restored);
        let applied = replica.take_ready().applied;
        self.replica = Some(replica);
        applied
    }

    /// The replica's replay base, if it moved since the node was last aligned.
    pub fn moved_base(&self) -> Option<Timestamp> {
        let base = self.replica.as_ref()?.replay_base();
        (base != self.base).then_some(base)
    }
}
