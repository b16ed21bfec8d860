//! Long hand-made histories (more than [`DEFAULT_SEARCH_MAX_OPS`] ops, so the general search
//! is skipped): the bad ones must still be refuted, the good ones fully judged. Each bad one
//! passes the direct checks, so only the lineage search can catch it.

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::randomized::{execute, Fate, Generated, Planned};
use super::tests::{replicas, t, Builder};
use super::*;

/// Grows `string` by appends of `client`'s tokens `tokens`, one every 4 time units from
/// `start`, each acknowledged with the right length, and reads the whole string after every
/// `read_every` of them. Returns the time after the last op.
fn grow(
    b: &mut Builder,
    string: &mut Vec<u8>,
    client: u64,
    tokens: Range<u64>,
    start: u64,
    read_every: u64,
) -> u64 {
    let mut now = start;
    for n in tokens {
        let value = t(client, n);
        string.extend_from_slice(&value);
        b.append(client, value, now, now + 1, string.len() as u64);
        if n % read_every == 0 {
            b.get(client + 1000, now + 2, now + 3, string.clone());
        }
        now += 4;
    }
    now
}

/// Ends a history with a `set` at `start` followed by enough appends to make it long, and
/// returns the final string.
fn finish_long(b: &mut Builder, start: u64) -> Vec<u8> {
    let mut string = t(90, 1);
    b.set(90, string.clone(), start, start + 1);
    grow(b, &mut string, 91, 1..2001, start + 2, 100);
    string
}

fn assert_not_linearizable(history: &History, final_string: &[u8]) -> Report {
    assert!(history.len() > DEFAULT_SEARCH_MAX_OPS);
    let report = check(history, &replicas(final_string));
    assert!(!report.is_ok(), "{report}");
    assert!(report.has("NotLinearizable"), "{report}");
    assert_eq!(report.lineage_search, Layer::Ran, "{report}");
    report
}

/// The op the refutation got stuck on.
fn stuck_op(report: &Report) -> Option<OpIndex> {
    report.failures().find_map(|anomaly| match anomaly {
        Anomaly::NotLinearizable { stuck: Stuck::Op(op), .. } => Some(op.index),
        _ => None,
    })
}

fn assert_decided_ok(history: &History, replicas: &[ReplicaState]) -> Report {
    let report = check(history, replicas);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.lineage_search, Layer::Ran, "{report}");
    assert!(!report.inconclusive, "{report}");
    report
}

// ---- bad histories ----

/// Issue 15: the read sees `A` after `B` completed, so `A`'s lineage must follow `B`'s set,
/// but `A` completed before `B` began. Each direct check is blind to it: neither lineage is
/// the initial or the final one.
#[test]
fn read_of_a_set_that_an_earlier_set_must_have_erased() {
    let mut b = Builder::default();
    b.set(1, t(1, 1), 0, 1);
    b.set(2, t(2, 1), 2, 3);
    b.get(3, 4, 5, t(1, 1));
    let mut c = t(4, 1);
    b.set(4, c.clone(), 10, 11);
    grow(&mut b, &mut c, 5, 1..2001, 12, u64::MAX);
    assert_not_linearizable(&b.history, &c);
}

/// A stale read: after `B`'s lineage was seen, a read still returns `A`'s long string.
#[test]
fn stale_read_of_an_older_lineage_in_a_long_history() {
    let mut b = Builder::default();
    let mut a = t(1, 1);
    b.set(1, a.clone(), 0, 1);
    let now = grow(&mut b, &mut a, 10, 1..1001, 2, 100);
    b.set(2, t(2, 1), now, now + 1);
    b.get(3, now + 2, now + 3, t(2, 1));
    let stale = b.get(3, now + 4, now + 5, a.clone());
    let final_string = finish_long(&mut b, now + 6);
    let report = assert_not_linearizable(&b.history, &final_string);
    assert_eq!(stuck_op(&report), Some(stale), "{report}");
}

/// A lost write: acknowledged in the middle of a lineage, then missing from every read after
/// it. A later `set` could erase it only if it came last in its lineage, after those reads.
#[test]
fn acknowledged_append_lost_in_the_middle_of_a_lineage() {
    let mut b = Builder::default();
    let mut s = Vec::new();
    let now = grow(&mut b, &mut s, 10, 1..501, 0, 50);
    let value = t(3, 1);
    let lost = b.append(3, value.clone(), now, now + 1, (s.len() + value.len()) as u64);
    let now = grow(&mut b, &mut s, 10, 501..1001, now + 2, 50);
    let final_string = finish_long(&mut b, now);
    let report = assert_not_linearizable(&b.history, &final_string);
    assert_eq!(stuck_op(&report), Some(lost), "{report}");
}

/// Reordered appends: two acknowledged appends that a `set` erased before anyone read them.
/// Their returned lengths put `y` first, but `x` completed before `y` began.
#[test]
fn erased_appends_whose_lengths_contradict_real_time() {
    let mut b = Builder::default();
    let mut a = t(1, 1);
    b.set(1, a.clone(), 0, 1);
    let now = grow(&mut b, &mut a, 10, 1..1001, 2, 100);
    let (x, y) = (t(3, 1), t(4, 1));
    let len = a.len() + y.len();
    b.append(3, x.clone(), now, now + 1, (len + x.len()) as u64);
    b.append(4, y.clone(), now + 2, now + 3, len as u64);
    b.set(5, t(5, 1), now, now + 10);
    let final_string = finish_long(&mut b, now + 11);
    assert_not_linearizable(&b.history, &final_string);
    // In the order their lengths give, they are fine.
    let mut b = Builder::default();
    let mut a = t(1, 1);
    b.set(1, a.clone(), 0, 1);
    let now = grow(&mut b, &mut a, 10, 1..1001, 2, 100);
    b.append(4, y.clone(), now, now + 1, len as u64);
    b.append(3, x.clone(), now + 2, now + 3, (len + x.len()) as u64);
    b.set(5, t(5, 1), now, now + 10);
    let final_string = finish_long(&mut b, now + 11);
    assert_decided_ok(&b.history, &replicas(&final_string));
}

/// A set in the wrong place: `S`'s lineage is seen in the middle of `A`'s, whose reads go on
/// growing afterwards. `A` cannot come after `S` (its set completed first), nor `S` after all
/// of `A`.
#[test]
fn set_seen_in_the_middle_of_another_lineage() {
    let mut b = Builder::default();
    let mut a = t(1, 1);
    b.set(1, a.clone(), 0, 1);
    let now = grow(&mut b, &mut a, 10, 1..501, 2, 50);
    b.set(3, t(3, 1), now, now + 1);
    b.get(4, now + 2, now + 3, t(3, 1));
    let now = grow(&mut b, &mut a, 10, 501..1001, now + 4, 50);
    let final_string = finish_long(&mut b, now);
    assert_not_linearizable(&b.history, &final_string);
}

/// An acknowledged `set` that no string shows, inside a lineage that reads show going on.
/// (Inside the initial lineage the direct checks would see it: that one precedes every set.)
#[test]
fn acknowledged_set_that_nothing_shows_inside_a_lineage() {
    let mut b = Builder::default();
    let mut s = t(1, 1);
    b.set(1, s.clone(), 0, 1);
    let now = grow(&mut b, &mut s, 10, 1..501, 2, 50);
    let set = b.set(3, t(3, 1), now, now + 1);
    let now = grow(&mut b, &mut s, 10, 501..1001, now + 2, 50);
    let final_string = finish_long(&mut b, now);
    let report = assert_not_linearizable(&b.history, &final_string);
    assert_eq!(stuck_op(&report), Some(set), "{report}");
}

// ---- writes no string shows, and what their lengths need ----

/// `a` was erased by `B` before anyone read it, and its length says an `Unknown` append
/// came just before it: the search has to apply that one (or one like it).
fn needs_an_unknown_append(unknown_invoke: u64) -> (History, Vec<u8>) {
    let mut b = Builder::default();
    b.set(1, t(1, 1), 0, 1);
    b.get(2, 2, 3, t(1, 1));
    b.unknown_append(3, t(3, 1), unknown_invoke);
    b.unknown_append(5, t(5, 12345), 4); // another length: no use
    b.unknown_append(6, t(6, 1), 5); // same length, later: no better
    b.append(4, t(4, 1), 5, 6, 18);
    let final_string = finish_long(&mut b, 7);
    (b.history, final_string)
}

#[test]
fn erased_append_after_an_unknown_one_that_no_string_shows() {
    let (history, final_string) = needs_an_unknown_append(4);
    assert_decided_ok(&history, &replicas(&final_string));
    // With both unknown appends of the right length sent only after `a` completed, nothing
    // explains its length.
    let (mut history, final_string) = needs_an_unknown_append(7);
    history.ops[4].invoke = 7;
    assert_not_linearizable(&history, &final_string);
}

#[test]
fn erased_append_after_an_unknown_set_that_no_string_shows() {
    let mut b = Builder::default();
    b.set(1, t(1, 1), 0, 1);
    b.get(2, 2, 3, t(1, 1));
    let unknown = t(3, 10);
    b.op(3, OpKind::Set(unknown.clone()), (4, None), Outcome::Unknown);
    b.append(4, t(4, 1), 5, 6, (unknown.len() + 6) as u64);
    let final_string = finish_long(&mut b, 7);
    assert_decided_ok(&b.history, &replicas(&final_string));
}

// ---- good histories shaped like a chaos run ----

const MS: u64 = 1_000_000;

/// Faults of a [`chaos_like`] run: every `period_s` seconds, one of three nodes is faulty
/// for `length_s` seconds. Its clients' ops are unknown: a share `reset` of them after 1 to
/// 50 ms (a lost connection), the others after the 5 s timeout. Half of the unknown writes
/// take effect anyway, up to 8 s after they were sent.
#[derive(Clone, Copy, Debug)]
struct Faults {
    period_s: u64,
    length_s: u64,
    reset: f64,
}

/// Faults like the chaos test's `mix` nemesis, roughly.
const MIX: Faults = Faults { period_s: 40, length_s: 10, reset: 0.0 };

/// A run shaped like the chaos test's, in nanoseconds: `clients` closed-loop clients (8 ms
/// think time, 5 to 50 ms per op), 20% gets and one `set` in 200, under `faults`.
fn chaos_like(rng: &mut StdRng, clients: u64, seconds: u64, faults: Faults) -> Generated {
    let mut planned = Vec::new();
    let period = faults.period_s * 1000 * MS;
    for client in 1..=clients {
        let mut now = rng.gen_range(0..10 * MS);
        let mut written = 0;
        while now < seconds * 1000 * MS {
            let faulty =
                (now / period) % 3 == client % 3 && now % period < faults.length_s * 1000 * MS;
            let op = match rng.gen_range(0..1000) {
                0..5 => OpKind::Set(token(client, written + 1)),
                5..205 => OpKind::Get,
                _ => OpKind::Append(token(client, written + 1)),
            };
            written += u64::from(op != OpKind::Get);
            let unknown_ms = if rng.gen_bool(faults.reset) { rng.gen_range(1..50) } else { 5000 };
            let (fate, latency) = match faulty {
                true if op != OpKind::Get && rng.gen_bool(0.5) => {
                    (Fate::UnknownApplied, unknown_ms)
                }
                true => (Fate::UnknownLost, unknown_ms),
                false if rng.gen_range(0..200) == 0 => (Fate::Failed, 1),
                false => (Fate::Ok, rng.gen_range(5..50)),
            };
            let complete = now + latency * MS;
            let late = if fate == Fate::UnknownApplied { 8000 * MS } else { latency * MS };
            let point = now + rng.gen_range(0..=late);
            planned.push(Planned { client, op, invoke: now, point, complete, fate, open: false });
            now = complete + 8 * MS;
        }
    }
    execute(rng, planned, 3)
}

#[test]
fn long_chaos_like_history_gets_a_complete_verdict() {
    let g = chaos_like(&mut StdRng::seed_from_u64(15), 16, 110, MIX);
    assert!(g.history.len() > 45_000, "{} ops", g.history.len());
    let report = assert_decided_ok(&g.history, &g.replicas);
    assert!(matches!(report.search, Layer::Skipped(_)), "{report}");
    // Without replicas the final string is unknown; still decided.
    assert_decided_ok(&g.history, &[]);
}

/// The timing asked for by issue 15, on a history the size of a 600 s chaos run. Run it
/// with `cargo test --release -p strstore-tests --lib checker::long_histories::timing --
/// --ignored --nocapture`.
#[test]
#[ignore = "takes a while in a debug build; run with --release"]
fn timing_of_a_600_s_chaos_like_history() {
    let started = std::time::Instant::now();
    let g = chaos_like(&mut StdRng::seed_from_u64(600), 16, 600, MIX);
    let generated = started.elapsed();
    let started = std::time::Instant::now();
    let report = check(&g.history, &g.replicas);
    let checked = started.elapsed();
    let count = |f: fn(&Op) -> bool| g.history.ops.iter().filter(|op| f(op)).count();
    println!(
        "{} ops ({} unknown, {} sets, {} gets), final string {} bytes; generated in {generated:?}, \
         checked in {checked:?}\n{report}",
        g.history.len(),
        count(|op| op.outcome == Outcome::Unknown),
        count(|op| matches!(op.op, OpKind::Set(_))),
        count(|op| op.op == OpKind::Get),
        g.replicas[0].string.len(),
    );
    assert!(report.is_ok() && !report.inconclusive, "{report}");
    assert_eq!(report.lineage_search, Layer::Ran);
}

/// Fault-heavy runs (a third of the time faulty; up to every faulty op an unknown one after
/// a few milliseconds, so more than ten thousand unknown outcomes) over several seeds. Run
/// it with `cargo test --release -p strstore-tests --lib checker::long_histories::stress --
/// --ignored --nocapture`.
#[test]
#[ignore = "takes a while in a debug build; run with --release"]
fn stress_unknown_heavy_chaos_like_histories() {
    for seed in 0..8 {
        let reset = [0.0, 0.5, 0.9, 1.0][seed as usize % 4];
        let faults = Faults { period_s: 30, length_s: 10, reset };
        let g = chaos_like(&mut StdRng::seed_from_u64(seed), 16, 300, faults);
        let started = std::time::Instant::now();
        let report = check(&g.history, &g.replicas);
        let unknown = g.history.ops.iter().filter(|op| op.outcome == Outcome::Unknown).count();
        let (ops, elapsed) = (g.history.len(), started.elapsed());
        println!("seed {seed} {faults:?}: {ops} ops, {unknown} unknown, {elapsed:?}: {report}");
        assert!(report.is_ok() && !report.inconclusive, "{report}");
    }
}

/// Checks a recorded chaos run again and times it, e.g. `CHAOS_OUT=/tmp/chaos-600 cargo test
/// --release -p strstore-tests --lib checker::long_histories::recheck -- --ignored
/// --nocapture` (the directory holds `history.jsonl` and `replicas.jsonl`).
#[test]
#[ignore = "needs CHAOS_OUT, the output directory of a chaos run"]
fn recheck_a_recorded_chaos_run() {
    let Ok(dir) = std::env::var("CHAOS_OUT") else {
        println!("set CHAOS_OUT to a chaos run's output directory");
        return;
    };
    let open = |name: &str| {
        let path = std::path::Path::new(&dir).join(name);
        std::io::BufReader::new(std::fs::File::open(&path).expect("cannot open the file"))
    };
    let started = std::time::Instant::now();
    let history = History::read_jsonl(open("history.jsonl")).expect("a history");
    let replicas = ReplicaState::read_jsonl(open("replicas.jsonl")).expect("replicas");
    let read = started.elapsed();
    let started = std::time::Instant::now();
    let report = check(&history, &replicas);
    println!(
        "{} ops read in {read:?}, checked in {:?}: {report}",
        history.len(),
        started.elapsed()
    );
}
