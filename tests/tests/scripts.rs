//! Scenario scripts for the engine (`tests/scripts/`, commands in `strstore_tests::script`):
//! each script's output must match its golden file. `UPDATE_GOLDENFILES=1 cargo test -p
//! strstore-tests --test scripts` rewrites them; read the diff before committing it.

use std::path::Path;

use strstore_tests::script::ScriptRunner;

fn run(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name);
    goldenscript::run(&mut ScriptRunner::default(), &path).expect("the script runs");
}

#[test]
fn replication() {
    run("replication");
}

#[test]
fn early_ack() {
    run("early_ack");
}

#[test]
fn view_change() {
    run("view_change");
}

#[test]
fn election() {
    run("election");
}

#[test]
fn rejoin() {
    run("rejoin");
}

#[test]
fn lost_data() {
    run("lost_data");
}

#[test]
fn missed_decision() {
    run("missed_decision");
}

#[test]
fn applied_then_installed() {
    run("applied_then_installed");
}
