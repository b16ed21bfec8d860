//! A simulated node: the production engine with its durability handshake, its log (the real
//! write-ahead file over a file system in memory) and its inbox. Where the production driver
//! has a log writer thread, a sync here happens at a step the simulation picks.

use std::collections::VecDeque;

use strstore_protocol::{Envelope, Request, Response, Timestamp, View};
use strstore_server::engine::{Engine, WriteNumber};
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
    /// Replies with a value (a `get`) given by a node outside its view, both before and
    /// after the engine step that produced them (one step may apply a read and then leave
    /// the view, which is fine: the read had its place in the order of the view it was in).
    pub reads_outside_view: usize,
}

pub struct SimNode {
    cfg: replica::Config,
    /// `None` while crashed.
    engine: Option<Engine>,
    log: SimLog,
    /// Highest write appended to the log, and whether it was synced since.
    written: WriteNumber,
    unsynced: bool,
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
            engine: Some(Engine::new(replica)),
            log: SimLog::default(),
            written: 0,
            unsynced: false,
            inbox: VecDeque::new(),
            down_until: 0,
            position: 0,
            base: Timestamp::default(),
            fresh: false,
        }
    }

    /// The replica, unless the node is down.
    pub fn replica(&self) -> Option<&Replica> {
        self.engine.as_ref().map(Engine::replica)
    }

    /// Repaired and not yet durably back in a view: a crash now leaves it fresh again.
    pub fn rejoining(&self) -> bool {
        self.fresh
    }

    pub fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    pub fn deliver(&mut self, env: Envelope) {
        if self.is_up() {
            self.inbox.push_back(env);
        }
    }

    pub fn client_request(&mut self, waiter: WaiterId, req: Request) {
        if let Some(e) = &mut self.engine {
            e.client_request(waiter, req);
        }
    }

    /// Feeds queued messages and a tick to the engine and carries out its output; if `sync`,
    /// makes the log durable and tells the engine, which releases what waited for it.
    pub fn advance(&mut self, tick: bool, sync: bool) -> Result<Output, String> {
        let mut out = Output::default();
        let Some(e) = &mut self.engine else { return Ok(out) };
        let member = e.replica().is_member();
        for env in self.inbox.drain(..) {
            e.step(env);
        }
        if tick {
            e.tick();
        }
        self.drain(&mut out, member)?;
        if sync && self.unsynced {
            self.log.sync().map_err(|e| e.to_string())?;
            self.unsynced = false;
            let e = self.engine.as_mut().expect("up");
            e.on_persisted(self.written);
            // The view it entered logged a snapshot before this sync: the rejoin is durable
            // (a real node removes its REJOIN marker then).
            let r = e.replica();
            self.fresh &= !(r.is_member() && r.view().epoch > 0);
            let member = r.is_member();
            self.drain(&mut out, member)?;
        }
        Ok(out)
    }

    /// Carries out the engine's output; `member`: whether the node was in its view before
    /// the inputs that produced it.
    fn drain(&mut self, out: &mut Output, mut member: bool) -> Result<(), String> {
        loop {
            let engine = self.engine.as_mut().expect("up");
            let Some(o) = engine.take_output() else { break };
            let member_before = std::mem::replace(&mut member, engine.replica().is_member());
            if !member_before && !member {
                let reads =
                    o.replies.iter().filter(|r| matches!(r.reply.result, Ok(Response::Value(_))));
                out.reads_outside_view += reads.count();
            }
            for write in &o.writes {
                self.log.append(&write.records).map_err(|e| e.to_string())?;
                self.written = write.number;
                self.unsynced = true;
            }
            out.messages.extend(o.messages);
            out.replies.extend(o.replies);
            out.applied.extend(o.applied);
            out.views.extend(o.view_changed);
        }
        Ok(())
    }

    /// Stops the node as a power cut would: unsynced log writes (but the first `torn` share
    /// of the one under way) and queued messages are lost. With `damaged`, the whole log is,
    /// as when a node finds its data damaged and `--repair` moves it aside.
    pub fn crash(&mut self, until: u64, damaged: bool, torn: f64) {
        self.engine = None;
        self.log.power_cut(torn);
        if damaged {
            self.log = SimLog::default();
            self.fresh = true;
        }
        self.written = 0;
        self.unsynced = false;
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
        self.engine = Some(Engine::new(replica));
        applied
    }

    /// The replica's replay base, if it moved since the node was last aligned.
    pub fn moved_base(&self) -> Option<Timestamp> {
        let base = self.replica()?.replay_base();
        (base != self.base).then_some(base)
    }
}
