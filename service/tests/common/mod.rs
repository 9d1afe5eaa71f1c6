//! What the process tests share: the real binary, started on `127.0.0.1:0`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_resultstore");

/// Starts `resultstore serve` in `dir` on its `config.toml`, on a free port; returns the
/// child and the URL it printed once listening (the readiness signal: no sleep).
pub fn serve(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "config.toml", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start resultstore serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the address line");
    let addr = line.trim().strip_prefix("resultstore listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    (child, format!("http://{addr}"))
}
