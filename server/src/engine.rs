//! The engine with its durability handshake: the [`Replica`] and the rules that say which of
//! its messages may leave before which log write is durable.
//!
//! As with raft-rs's `RawNode`, a driver only performs I/O. It feeds the engine inputs and
//! ticks, drains [`Output`]s, writes each [`LogWrite`] in order, and calls
//! [`Engine::on_persisted`] with the highest write number that became durable. Messages that
//! must wait for a write stay here until then; messages this node addresses to itself never
//! leave it. The production driver (`server`) and the simulation run this same code.
//!
//! The rules:
//! - A message that waits on a write (an ack, a forwarded action, a vote) is released only
//!   once that write and every earlier one is durable.
//! - A write of commit records only, with no message waiting on it, may wait: nothing is
//!   released on its account (a node applies and answers on a commit without its record, and
//!   a lost commit record is learned again from the peers after a restart). It is not handed
//!   to the driver at once but rides with the next write that must be synced, or goes at the
//!   next tick as a write the driver may sync at leisure. On a loaded node that halves the
//!   syncs: every action is followed by its commit.
//! - When everything written is durable and nothing new is to be written, what waits for a
//!   sync goes at once (a fence's acks, the acks of a node whose log is idle).

use std::collections::VecDeque;

use strstore_protocol::{Envelope, Error, Health, Request, Timestamp, View};

use crate::replica::{ClientReply, LogRecord, Ready, Replica, WaiterId};

/// Identifies a [`LogWrite`]; numbers increase by one from 1.
pub type WriteNumber = u64;

/// Records for the log, to be appended after every earlier write.
#[derive(Debug)]
pub struct LogWrite {
    pub number: WriteNumber,
    pub records: Vec<LogRecord>,
    /// Something waits on this write: sync it soon. Otherwise the driver may let it wait for
    /// the next write that must be synced (or a short idle timeout).
    pub urgent: bool,
}

impl LogWrite {
    fn commits_only(records: &[LogRecord]) -> bool {
        records.iter().all(|r| matches!(r, LogRecord::Commit { .. }))
    }
}

/// What the driver must do after an input, in this order: note the view, answer the
/// clients, send the messages, hand the writes to the log.
#[derive(Debug, Default)]
pub struct Output {
    /// Set when the view changed: the driver updates its peer addresses before sending.
    pub view_changed: Option<View>,
    pub replies: Vec<ClientReply>,
    /// Messages for peers, never for this node; they may go at once.
    pub messages: Vec<Envelope>,
    pub writes: Vec<LogWrite>,
    /// Write actions applied, in order (for checkers and metrics).
    pub applied: Vec<Timestamp>,
}

/// A replica and its durability handshake.
pub struct Engine {
    replica: Replica,
    /// Highest write number handed out.
    written: WriteNumber,
    /// Highest write number the driver reported durable.
    durable: WriteNumber,
    /// Messages waiting for their write to become durable, by write number.
    waiting: VecDeque<(WriteNumber, Vec<Envelope>)>,
    /// Commit records not yet handed to the driver (see the module's rules).
    deferred_commits: Vec<LogRecord>,
    /// Released messages for peers, for the next output.
    released: Vec<Envelope>,
    /// Released messages for this node, stepped before the next output.
    loopback: VecDeque<Envelope>,
    /// Set by a tick: the deferred commit records go out with the next output.
    flush_due: bool,
}

impl Engine {
    pub fn new(replica: Replica) -> Self {
        Self {
            replica,
            written: 0,
            durable: 0,
            waiting: VecDeque::new(),
            deferred_commits: Vec::new(),
            released: Vec::new(),
            loopback: VecDeque::new(),
            flush_due: false,
        }
    }

    /// The replica, for queries.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn step(&mut self, env: Envelope) {
        self.replica.step(env);
    }

    pub fn client_request(&mut self, waiter: WaiterId, req: Request) {
        self.replica.client_request(waiter, req);
    }

    pub fn set_health(&mut self, health: Health) {
        self.replica.set_health(health);
    }

    /// The node stops serving (its log failed): every waiting client gets `err`.
    pub fn stop_serving(&mut self, err: Error) {
        self.replica.stop_serving(err);
    }

    /// One tick of logical time; deferred commit records go out with the next output.
    pub fn tick(&mut self) {
        self.replica.tick();
        self.flush_due = true;
    }

    /// Every write up to `through` is durable: the messages that waited on them are released.
    pub fn on_persisted(&mut self, through: WriteNumber) {
        debug_assert!(through <= self.written, "write {through} was never handed out");
        self.durable = self.durable.max(through);
        while self.waiting.front().is_some_and(|(n, _)| *n <= through) {
            let (_, messages) = self.waiting.pop_front().expect("checked");
            self.release(messages);
        }
    }

    /// True when every write handed out is durable and none is deferred: a restart now would
    /// find everything this engine logged.
    pub fn is_durable(&self) -> bool {
        self.durable == self.written && self.deferred_commits.is_empty()
    }

    /// What the driver must do next, or `None` when there is nothing. Call until `None`
    /// after every input: released messages for this node are stepped here and may produce
    /// more.
    pub fn take_output(&mut self) -> Option<Output> {
        while let Some(env) = self.loopback.pop_front() {
            self.replica.step(env);
        }
        self.replica.propose();
        let ready = self.replica.take_ready();
        let mut out = Output::default();
        self.arrange(ready, &mut out);
        if std::mem::take(&mut self.flush_due) {
            out.writes.extend(self.take_deferred_commits(false));
        }
        let empty = out.view_changed.is_none()
            && out.replies.is_empty()
            && out.messages.is_empty()
            && out.writes.is_empty()
            && out.applied.is_empty();
        (!empty || !self.loopback.is_empty()).then_some(out)
    }

    /// The deferred commit records as a write, when shutting down.
    pub fn flush(&mut self) -> Option<LogWrite> {
        self.take_deferred_commits(false)
    }

    fn arrange(&mut self, ready: Ready, out: &mut Output) {
        let Ready { log, after_sync, messages, replies, applied, view_changed } = ready;
        out.view_changed = view_changed;
        out.replies = replies;
        out.applied = applied;
        out.messages = std::mem::take(&mut self.released);
        self.release(messages);
        out.messages.append(&mut self.released);
        if log.is_empty() && self.is_durable() {
            self.release(after_sync);
            out.messages.append(&mut self.released);
        } else if after_sync.is_empty() && LogWrite::commits_only(&log) {
            self.deferred_commits.extend(log);
        } else {
            self.deferred_commits.extend(log);
            let write = self.take_deferred_commits(true).expect("records or messages to order");
            self.waiting.push_back((write.number, after_sync));
            out.writes.push(write);
        }
    }

    /// A write of the deferred commit records, and `urgent`; none when there is nothing to
    /// write and nothing waits on it.
    fn take_deferred_commits(&mut self, urgent: bool) -> Option<LogWrite> {
        if self.deferred_commits.is_empty() && !urgent {
            return None;
        }
        self.written += 1;
        let records = std::mem::take(&mut self.deferred_commits);
        Some(LogWrite { number: self.written, records, urgent })
    }

    /// Messages for peers go to the next output; those for this node are stepped before it.
    fn release(&mut self, messages: Vec<Envelope>) {
        let me = self.replica.id();
        for env in messages {
            if env.to == me {
                self.loopback.push_back(env);
            } else {
                self.released.push(env);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use strstore_protocol::{Op, PeerMsg};

    use super::*;
    use crate::replica::{Config, Restored};

    fn engine(id: u64) -> Engine {
        Engine::new(Replica::new(Config::new(id, vec![1, 2]), Restored::default()))
    }

    /// Every output until there is none, merged.
    fn drain(e: &mut Engine) -> Output {
        let mut all = Output::default();
        while let Some(o) = e.take_output() {
            let me = e.replica().id();
            assert!(o.messages.iter().all(|m| m.to != me), "a message to itself left");
            all.replies.extend(o.replies);
            all.messages.extend(o.messages);
            all.writes.extend(o.writes);
        }
        all
    }

    fn append(e: &mut Engine, seq: u64) {
        e.client_request(seq, Request { client: 7, seq, op: Op::Append("x".into()) });
    }

    /// The action goes to the peer only once its write is reported durable.
    #[test]
    fn a_message_waiting_on_a_write_leaves_only_once_it_is_durable() {
        let mut n1 = engine(1);
        append(&mut n1, 1);
        let out = drain(&mut n1);
        assert_eq!(out.writes.len(), 1);
        let write = &out.writes[0];
        assert!(write.urgent);
        assert!(write.records.iter().any(|r| matches!(r, LogRecord::Action(_))), "{write:?}");
        assert!(out.messages.is_empty(), "sent before its write was durable: {out:?}");
        assert!(!n1.is_durable());
        n1.on_persisted(write.number);
        let out = drain(&mut n1);
        assert!(matches!(out.messages[..], [Envelope { to: 2, msg: PeerMsg::Action(_), .. }]));
    }

    /// Commit records nothing waits on are held back, then handed out at the next tick as a
    /// write that is not urgent; the reply does not wait for them.
    #[test]
    fn commit_records_wait_for_the_next_tick_and_are_not_urgent() {
        let (mut n1, mut n2) = (engine(1), engine(2));
        append(&mut n1, 1);
        let w = drain(&mut n1).writes.remove(0);
        n1.on_persisted(w.number);
        for env in drain(&mut n1).messages {
            n2.step(env);
        }
        let out = drain(&mut n2);
        n2.on_persisted(out.writes.last().expect("n2 logged the action").number);
        for env in drain(&mut n2).messages.into_iter().filter(|m| m.to == 1) {
            n1.step(env);
        }
        let out = drain(&mut n1);
        assert_eq!(out.replies.len(), 1, "the append is answered at once: {out:?}");
        assert!(out.writes.is_empty(), "the commit record is held back: {out:?}");
        assert!(!n1.is_durable(), "a deferred record is not durable yet");
        n1.tick();
        let out = drain(&mut n1);
        let commit = out.writes.iter().find(|w| !w.records.is_empty()).expect("flushed");
        assert!(!commit.urgent);
        assert!(matches!(commit.records[..], [LogRecord::Commit { .. }]));
        n1.on_persisted(commit.number);
        assert!(n1.is_durable());
    }
}
