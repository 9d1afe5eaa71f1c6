//! The `resultstore` binary: `serve`, and client commands for a person at a terminal.
//! Thin by design: serving lives in the library ([`resultstore::wire::server`]), client calls
//! in `resultstore-client`; this file parses arguments and prints.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    resultstore::runtime::memory::bound_allocator_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
