//! `strstore-chaos`: the Jepsen-style chaos test (see `strstore_tests::chaos` and
//! `deploy/chaos.sh`, which builds and runs it).

use std::process::ExitCode;

use clap::Parser;
use strstore_tests::chaos::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    match chaos::run(&args) {
        Ok(outcome) => {
            println!("{}", outcome.summary);
            if outcome.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("strstore-chaos: the test could not run: {error:#}");
            ExitCode::from(2)
        }
    }
}
