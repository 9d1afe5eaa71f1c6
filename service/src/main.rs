//! The `resultstore` binary: `serve`, and client commands for a person at a terminal.
//! Thin by design: serving lives in the library ([`resultstore::server`]), client calls
//! in `resultstore-client`; this file parses arguments and prints.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
