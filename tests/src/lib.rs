//! Test support for strstore: the history checker, the deterministic simulation, scenario
//! scripts for the engine and the multi-process cluster harness.

pub mod chaos;
pub mod checker;
pub mod cluster;
pub mod script;
pub mod sim;
