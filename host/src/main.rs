//! The `tvs` command-line tool. Exit codes: 0 success, 1 nothing found where that matters
//! (a search without hits, a missing document), 2 error (the whole cause chain is printed).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
