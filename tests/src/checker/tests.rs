//! Hand-made histories: good ones that must pass, and bad ones that must be caught by the
//! expected anomaly, by the direct checks and (separately) by the search.

use super::*;

/// A tiny DSL for writing histories by hand. Times are plain numbers; `t(c, n)` is client
/// `c`'s `n`-th token.
#[derive(Default)]
pub(super) struct Builder {
    pub(super) history: History,
}

pub(super) fn t(client: u64, n: u64) -> Vec<u8> {
    token(client, n)
}

pub(super) fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

impl Builder {
    pub(super) fn op(
        &mut self,
        client: u64,
        op: OpKind,
        times: (u64, Option<u64>),
        outcome: Outcome,
    ) -> OpIndex {
        let (invoke, complete) = times;
        self.history.push(Op { client, op, invoke, complete, outcome, node: Some(1) })
    }

    pub(super) fn append(
        &mut self,
        client: u64,
        value: Vec<u8>,
        invoke: u64,
        complete: u64,
        len: u64,
    ) -> OpIndex {
        let outcome = Outcome::Ok(OkValue::Len(len));
        self.op(client, OpKind::Append(value), (invoke, Some(complete)), outcome)
    }

    pub(super) fn set(
        &mut self,
        client: u64,
        value: Vec<u8>,
        invoke: u64,
        complete: u64,
    ) -> OpIndex {
        let outcome = Outcome::Ok(OkValue::Len(value.len() as u64));
        self.op(client, OpKind::Set(value), (invoke, Some(complete)), outcome)
    }

    pub(super) fn get(
        &mut self,
        client: u64,
        invoke: u64,
        complete: u64,
        value: Vec<u8>,
    ) -> OpIndex {
        let outcome = Outcome::Ok(OkValue::Value(value));
        self.op(client, OpKind::Get, (invoke, Some(complete)), outcome)
    }

    pub(super) fn unknown_append(&mut self, client: u64, value: Vec<u8>, invoke: u64) -> OpIndex {
        self.op(client, OpKind::Append(value), (invoke, None), Outcome::Unknown)
    }

    pub(super) fn failed_append(
        &mut self,
        client: u64,
        value: Vec<u8>,
        invoke: u64,
        complete: u64,
    ) -> OpIndex {
        let outcome = Outcome::Failed("not a member".into());
        self.op(client, OpKind::Append(value), (invoke, Some(complete)), outcome)
    }
}

/// Three replicas that all hold `string` after the same actions.
pub(super) fn replicas(string: &[u8]) -> Vec<ReplicaState> {
    let applied = vec![(1, 1), (2, 1), (1, 2)];
    (1..=3)
        .map(|node| ReplicaState {
            node,
            string: string.to_vec(),
            applied: applied.clone(),
            digest: None,
        })
        .collect()
}

fn assert_ok(history: &History, final_string: &[u8]) -> Report {
    let report = check(history, &replicas(final_string));
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.direct, Layer::Ran, "{report}");
    assert_eq!(report.search, Layer::Ran, "{report}");
    assert!(!report.inconclusive, "{report}");
    report
}

/// Asserts that the direct checks report `kind` and that the search alone proves the history
/// not linearizable.
fn assert_caught(history: &History, replicas: &[ReplicaState], kind: &str) -> Report {
    let report = check(history, replicas);
    assert!(report.has(kind), "expected {kind}:\n{report}");
    assert!(!report.is_ok());
    let search_only = CheckConfig { direct: false, ..CheckConfig::default() };
    let searched = check_with(history, replicas, &search_only);
    assert!(searched.has("NotLinearizable"), "search alone should fail:\n{searched}");
    report
}

// ---- good histories ----

#[test]
fn sequential_appends_and_gets_pass() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.get(2, 2, 3, t(1, 1));
    b.append(2, t(2, 1), 4, 5, 12);
    b.get(1, 6, 7, cat(&[t(1, 1), t(2, 1)]));
    assert_ok(&b.history, &cat(&[t(1, 1), t(2, 1)]));
}

#[test]
fn concurrent_appends_may_land_in_any_order() {
    let mut b = Builder::default();
    // Invoked in the order 1, 2, 3; applied 3, 1, 2; all overlap.
    b.append(1, t(1, 1), 0, 10, 12);
    b.append(2, t(2, 1), 1, 10, 18);
    b.append(3, t(3, 1), 2, 5, 6);
    // A read overlapping everything may see any prefix of the final order.
    b.get(4, 0, 10, t(3, 1));
    b.get(5, 3, 9, cat(&[t(3, 1), t(1, 1)]));
    // Touching intervals (complete == invoke) count as concurrent.
    b.get(6, 10, 11, cat(&[t(3, 1), t(1, 1)]));
    b.get(4, 11, 12, cat(&[t(3, 1), t(1, 1), t(2, 1)]));
    assert_ok(&b.history, &cat(&[t(3, 1), t(1, 1), t(2, 1)]));
}

#[test]
fn unknown_appends_may_or_may_not_apply() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.unknown_append(2, t(2, 1), 2); // applied, late
    b.unknown_append(3, t(3, 1), 2); // never applied
    b.get(1, 3, 4, t(1, 1));
    b.append(1, t(1, 2), 5, 6, 12);
    b.get(1, 7, 8, cat(&[t(1, 1), t(1, 2)]));
    assert_ok(&b.history, &cat(&[t(1, 1), t(1, 2), t(2, 1)]));
}

#[test]
fn failed_writes_stay_invisible() {
    let mut b = Builder::default();
    b.failed_append(1, t(1, 1), 0, 1);
    b.append(1, t(1, 2), 2, 3, 6);
    // A retry of a refused request with the same value is fine.
    b.failed_append(2, t(2, 1), 4, 5);
    b.append(2, t(2, 1), 6, 7, 12);
    assert_ok(&b.history, &cat(&[t(1, 2), t(2, 1)]));
}

#[test]
fn set_erases_earlier_appends() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.append(2, t(2, 1), 2, 3, 12);
    b.get(3, 4, 5, cat(&[t(1, 1), t(2, 1)]));
    b.set(3, t(3, 1), 6, 7);
    b.get(1, 8, 9, t(3, 1));
    b.append(1, t(1, 2), 10, 11, 12);
    // Concurrent with the set: ordered before it, so erased although acknowledged.
    b.append(2, t(2, 2), 5, 7, 18);
    b.set(3, cat(&[t(3, 2), t(3, 3)]), 12, 13); // a two-token set value
    b.append(2, t(2, 3), 14, 15, 18);
    b.get(1, 16, 17, cat(&[t(3, 2), t(3, 3), t(2, 3)]));
    assert_ok(&b.history, &cat(&[t(3, 2), t(3, 3), t(2, 3)]));
}

#[test]
fn unknown_set_may_apply_late() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.op(2, OpKind::Set(t(2, 1)), (2, Some(3)), Outcome::Unknown);
    b.append(1, t(1, 2), 4, 5, 12);
    b.get(1, 6, 7, cat(&[t(1, 1), t(1, 2)]));
    b.append(1, t(1, 3), 8, 9, 18);
    assert_ok(&b.history, &cat(&[t(2, 1)]));
}

#[test]
fn values_without_tokens_use_the_search_only() {
    let mut b = Builder::default();
    b.op(1, OpKind::Set(b"ab".to_vec()), (0, Some(1)), Outcome::Ok(OkValue::Len(2)));
    b.op(1, OpKind::Append(b"c".to_vec()), (2, Some(3)), Outcome::Ok(OkValue::Len(3)));
    b.get(2, 1, 4, b"abc".to_vec());
    let report = check(&b.history, &replicas(b"abc"));
    assert!(report.is_ok(), "{report}");
    assert!(matches!(report.direct, Layer::Skipped(_)), "{report}");
    assert_eq!(report.search, Layer::Ran);
}

#[test]
fn empty_history_is_fine() {
    let report = check(&History::new(), &[]);
    assert!(report.is_ok() && !report.inconclusive, "{report}");
    assert!(check(&History::new(), &replicas(b"")).is_ok());
}

// ---- bad histories ----

#[test]
fn lost_acknowledged_append() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let lost = b.append(2, t(2, 1), 2, 3, 12);
    let report = assert_caught(&b.history, &replicas(&t(1, 1)), "LostWrite");
    assert!(report.failures().any(|a| a.primary_op() == Some(lost)), "{report}");
}

#[test]
fn lost_acknowledged_set() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.set(2, t(2, 1), 2, 3);
    assert_caught(&b.history, &replicas(&t(1, 1)), "LostWrite");
}

#[test]
fn append_erased_by_a_set_that_came_before_it() {
    let mut b = Builder::default();
    b.set(1, t(1, 1), 0, 1);
    b.append(2, t(2, 1), 2, 3, 12); // strictly after the set: cannot be erased by it
    b.append(1, t(1, 2), 4, 5, 12);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(1, 2)])), "LostWrite");
}

#[test]
fn duplicated_append() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.append(2, t(2, 1), 2, 3, 12);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(2, 1), t(2, 1)])), "DuplicateToken");
}

#[test]
fn stale_get() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.append(1, t(1, 2), 2, 3, 12);
    b.get(2, 4, 5, t(1, 1)); // invoked after the second append completed
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(1, 2)])), "StaleRead");
}

#[test]
fn stale_get_of_an_older_lineage() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.set(2, t(2, 1), 2, 3);
    b.get(3, 4, 5, t(1, 1)); // still sees the string from before the set
    assert_caught(&b.history, &replicas(&t(2, 1)), "StaleRead");
}

#[test]
fn get_not_a_prefix_of_the_final_string() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 10, 6);
    b.append(2, t(2, 1), 0, 10, 12);
    b.get(3, 0, 10, t(2, 1)); // but the final order puts t(1, 1) first
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(2, 1)])), "ReadNotPrefix");
}

#[test]
fn get_sees_a_write_from_the_future() {
    let mut b = Builder::default();
    b.get(1, 0, 1, t(2, 1));
    b.append(2, t(2, 1), 2, 3, 6);
    assert_caught(&b.history, &replicas(&t(2, 1)), "ReadFromFuture");
}

#[test]
fn gets_go_backwards() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 10, 6);
    b.append(1, t(1, 2), 11, 30, 12);
    b.get(2, 12, 13, cat(&[t(1, 1), t(1, 2)]));
    b.get(3, 14, 15, t(1, 1));
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(1, 2)])), "NonMonotonicRead");
}

#[test]
fn final_order_contradicts_real_time() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 12);
    b.append(2, t(2, 1), 2, 3, 6);
    assert_caught(&b.history, &replicas(&cat(&[t(2, 1), t(1, 1)])), "RealTimeOrderViolation");
}

#[test]
fn replicas_with_different_strings() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let mut states = replicas(&t(1, 1));
    states[2].string = cat(&[t(1, 1), t(1, 1)]);
    let report = check(&b.history, &states);
    assert!(report.has("ReplicasDiverge"), "{report}");
    let diverge = report.failures().find(|a| a.kind() == "ReplicasDiverge").unwrap();
    assert!(matches!(
        diverge,
        Anomaly::ReplicasDiverge { b: 3, divergence: Divergence::Strings { .. }, .. }
    ));
}

#[test]
fn replicas_with_different_applied_order() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let mut states = replicas(&t(1, 1));
    states[1].applied.swap(0, 1);
    let report = check(&b.history, &states);
    let diverge = report.failures().find(|a| a.kind() == "ReplicasDiverge");
    let expected = Divergence::AppliedOrder { index: 0, a: Some((1, 1)), b: Some((2, 1)) };
    let divergence = match diverge {
        Some(Anomaly::ReplicasDiverge { divergence, .. }) => divergence,
        _ => panic!("{report}"),
    };
    assert_eq!(*divergence, expected, "{report}");
}

#[test]
fn lagging_replica_is_ok_only_when_allowed() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let mut states = replicas(&t(1, 1));
    states[0].applied.pop();
    states[0].string.clear();
    assert!(check(&b.history, &states).has("ReplicasDiverge"));
    let lenient = CheckConfig { require_converged_replicas: false, ..CheckConfig::default() };
    let report = check_with(&b.history, &states, &lenient);
    assert!(report.is_ok(), "{report}");
}

/// Replicas known only by their digests, as a real cluster reports them.
fn digest_replicas(string: &[u8], digests: &[(u64, u64)]) -> Vec<ReplicaState> {
    let states = digests.iter().zip(1..);
    states
        .map(|(&(actions, hash), node)| ReplicaState {
            node,
            string: string.to_vec(),
            applied: vec![],
            digest: Some(AppliedDigest { actions, hash }),
        })
        .collect()
}

#[test]
fn replicas_with_different_digests() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let states = digest_replicas(&t(1, 1), &[(3, 0xaa), (3, 0xaa), (3, 0xbb)]);
    let report = check(&b.history, &states);
    let expected = Divergence::Digests { actions: 3, a_hash: 0xaa, b_hash: 0xbb };
    match report.failures().find(|a| a.kind() == "ReplicasDiverge") {
        Some(Anomaly::ReplicasDiverge { b: 3, divergence, .. }) => {
            assert_eq!(*divergence, expected, "{report}")
        }
        _ => panic!("{report}"),
    }
    assert!(report.to_string().contains("digest"), "{report}");
    let same = digest_replicas(&t(1, 1), &[(3, 0xaa), (3, 0xaa), (3, 0xaa)]);
    assert!(check(&b.history, &same).is_ok());
}

#[test]
fn lagging_digest_is_ok_only_when_allowed() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    let mut states = digest_replicas(&t(1, 1), &[(3, 0xaa), (2, 0x11), (3, 0xaa)]);
    states[1].string.clear();
    assert!(check(&b.history, &states).has("ReplicasDiverge"));
    let lenient = CheckConfig { require_converged_replicas: false, ..CheckConfig::default() };
    let report = check_with(&b.history, &states, &lenient);
    assert!(report.is_ok(), "{report}");
    // Lagging is allowed, a different history at the same count is not.
    let forked = digest_replicas(&t(1, 1), &[(3, 0xaa), (2, 0x11), (2, 0x22)]);
    assert!(check_with(&b.history, &forked, &lenient).has("ReplicasDiverge"));
}

#[test]
fn replica_applies_an_action_twice() {
    let mut states = replicas(b"");
    for state in &mut states {
        state.applied.push((1, 1));
    }
    assert!(check(&History::new(), &states).has("DuplicateAction"));
}

#[test]
fn failed_append_visible() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.failed_append(2, t(2, 1), 2, 3);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(2, 1)])), "FailedWriteVisible");
}

#[test]
fn wrong_returned_length() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    b.append(2, t(2, 1), 2, 3, 13);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(2, 1)])), "WrongReturnedLength");
}

#[test]
fn phantom_token() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(9, 9)])), "PhantomToken");
}

#[test]
fn garbage_in_the_final_string() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 1, 6);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), b"<c2".to_vec()])), "MalformedString");
}

#[test]
fn torn_multi_token_write() {
    let mut b = Builder::default();
    b.append(1, cat(&[t(1, 1), t(1, 2)]), 0, 10, 12);
    b.get(2, 0, 10, t(1, 1));
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(1, 2)])), "TornWrite");
}

#[test]
fn set_value_in_the_middle() {
    let mut b = Builder::default();
    b.append(1, t(1, 1), 0, 10, 6);
    b.set(2, t(2, 1), 0, 10);
    assert_caught(&b.history, &replicas(&cat(&[t(1, 1), t(2, 1)])), "MisplacedSet");
}

/// Every read on its own fits an order of the two sets, but no single order fits them all:
/// the direct checks are blind to this, the search is not.
#[test]
fn reads_of_two_sets_that_no_order_explains() {
    let mut b = Builder::default();
    b.set(1, t(1, 1), 0, 30);
    b.set(2, t(2, 1), 0, 30);
    b.get(3, 20, 30, t(1, 1));
    b.get(4, 20, 30, t(2, 1));
    // Fine so far: set 1, read 1, set 2, read 2. But both sets are done by now.
    b.get(3, 35, 40, t(1, 1));
    b.get(4, 35, 40, t(2, 1));
    b.set(5, t(5, 1), 50, 60);
    let report = check(&b.history, &replicas(&t(5, 1)));
    assert_eq!(report.direct, Layer::Ran);
    assert!(report.has("NotLinearizable"), "{report}");
    assert!(!report.is_ok());
    // Without the second pair of reads, it is fine.
    b.history.ops.truncate(4);
    b.set(5, t(5, 1), 50, 60);
    assert_ok(&b.history, &t(5, 1));
}

#[test]
fn get_returns_a_value_no_order_explains() {
    let mut b = Builder::default();
    b.op(1, OpKind::Set(b"ab".to_vec()), (0, Some(1)), Outcome::Ok(OkValue::Len(2)));
    b.op(1, OpKind::Append(b"c".to_vec()), (2, Some(3)), Outcome::Ok(OkValue::Len(3)));
    b.get(2, 1, 4, b"cab".to_vec());
    let report = check(&b.history, &replicas(b"abc"));
    let not_linearizable = report.failures().find(|a| a.kind() == "NotLinearizable");
    assert!(
        matches!(not_linearizable, Some(Anomaly::NotLinearizable { stuck: Stuck::Op(_), .. })),
        "{report}"
    );
}

#[test]
fn final_state_that_no_order_reaches() {
    let mut b = Builder::default();
    b.op(1, OpKind::Append(b"a".to_vec()), (0, Some(1)), Outcome::Ok(OkValue::Len(1)));
    let report = check(&b.history, &replicas(b"aa"));
    assert!(
        report
            .failures()
            .any(|a| matches!(a, Anomaly::NotLinearizable { stuck: Stuck::FinalState, .. })),
        "{report}"
    );
}

#[test]
fn invalid_records_are_reported() {
    let mut b = Builder::default();
    b.op(1, OpKind::Get, (5, Some(3)), Outcome::Ok(OkValue::Value(vec![])));
    b.op(1, OpKind::Get, (5, Some(6)), Outcome::Ok(OkValue::Len(3)));
    let report = check(&b.history, &[]);
    assert_eq!(report.failures().filter(|a| a.kind() == "InvalidHistory").count(), 2, "{report}");
}

// ---- budget, reporting ----

#[test]
fn search_budget_is_a_warning() {
    // Twenty concurrent unknown appends of "a" and a read of more a's than there are: every
    // subset of them keeps the read reachable, so the search must try them all to say no.
    let mut b = Builder::default();
    for client in 0..20 {
        b.unknown_append(client, b"a".to_vec(), 0);
    }
    b.get(99, 100, 101, vec![b'a'; 25]);
    let config = CheckConfig { search_max_steps: 1000, ..CheckConfig::default() };
    let report = check_with(&b.history, &[], &config);
    assert!(report.is_ok(), "{report}");
    assert!(report.inconclusive);
    assert_eq!(report.search, Layer::GaveUp);
    assert!(report.has("SearchBudgetExceeded"));
    assert!(report.to_string().contains("inconclusive"), "{report}");
    // With enough budget the search does conclude.
    let report =
        check_with(&b.history, &[], &CheckConfig { search_max_steps: 50_000_000, ..config });
    assert!(report.has("NotLinearizable") && !report.inconclusive, "{report}");
}

#[test]
fn unchecked_history_is_inconclusive() {
    let mut b = Builder::default();
    b.op(1, OpKind::Append(b"x".to_vec()), (0, Some(1)), Outcome::Ok(OkValue::Len(1)));
    let config = CheckConfig { search_max_ops: 0, ..CheckConfig::default() };
    let report = check_with(&b.history, &replicas(b"x"), &config);
    assert!(report.is_ok() && report.inconclusive && report.has("NotChecked"), "{report}");
}

#[test]
fn report_names_ops_readably() {
    let mut b = Builder::default();
    b.append(3, t(3, 7), 100, 130, 7);
    let report = check(&b.history, &replicas(b""));
    let text = report.to_string();
    assert!(text.contains("LostWrite"), "{text}");
    assert!(
        text.contains(r#"#0 (client 3 via n1, [100, 130]: append "<c3-7>" -> len 7)"#),
        "{text}"
    );
    assert!(text.contains("n1"), "{text}");
}

#[test]
fn anomalies_are_capped() {
    let mut b = Builder::default();
    for n in 0..50 {
        b.append(1, t(1, n), 2 * n, 2 * n + 1, 6);
    }
    let config =
        CheckConfig { max_anomalies_per_kind: 10, search_max_ops: 0, ..CheckConfig::default() };
    let report = check_with(&b.history, &replicas(b""), &config);
    assert_eq!(report.failures().count(), 10);
    assert_eq!(report.dropped, 40);
    assert!(!report.is_ok());
}
