//! `cargo run --example audit_fill -- PATH BYTES`: writes a full audit log (hub-flood
//! entries and a few pending destroys, hash-chained as the agent writes them) of at most
//! BYTES to PATH, which must not exist. `scripts/budgets.sh` starts the release daemon
//! on one to check its memory at start with a full audit log. Never shipped.

#[path = "../tests/common/audit_fill.rs"]
mod audit_fill;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(Ok(bytes)), None) = (
        args.first().map(PathBuf::from),
        args.get(1).map(|b| b.parse::<u64>()),
        args.get(2),
    ) else {
        eprintln!("usage: audit_fill PATH BYTES");
        return ExitCode::from(2);
    };
    match audit_fill::fill(&path, bytes) {
        Ok(len) => {
            println!("{len}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit_fill: {e}");
            ExitCode::FAILURE
        }
    }
}
