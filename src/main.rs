//! The `felhom-agent` binary: parse the command line, dispatch, exit with its code.
//! Nothing else lives here.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    felhom_agent::cli::main(std::env::args_os().skip(1).collect())
}
