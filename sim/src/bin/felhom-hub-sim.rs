//! Runs the hub simulator as a process, for demos, manual runs and the budget script.
//!
//! Prints one JSON line on stdout: the `hub` section of an agent config that points at it
//! (url, bearer key, pinned fingerprint). Then one line `report N` each time it accepts
//! the N-th report, so a script can wait for the agent's first report. Serves until
//! killed, or until stdin closes with `--until-stdin-eof`. Demo code only; never shipped
//! with the agent.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use felhom_sim::{CertChoice, HubSim};
use serde_json::json;

const USAGE: &str =
    "usage: felhom-hub-sim [--key KEY] [--poll SECONDS] [--cert self|ca|other] [--until-stdin-eof]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("felhom-hub-sim: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut builder = HubSim::builder();
    let mut until_eof = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        builder = match arg.as_str() {
            "--key" => builder.key(&value("--key")?),
            "--poll" => {
                let v = value("--poll")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--poll {v}: not a number of seconds"))?;
                builder.default_envelope(json!({
                    "poll_interval_seconds": secs,
                    "blocked": false,
                    "desired_generation": 0,
                    "has_signed_ops": false
                }))
            }
            "--cert" => match value("--cert")?.as_str() {
                "self" => builder.cert(CertChoice::SelfSigned),
                "ca" => builder.cert(CertChoice::CaSigned),
                "other" => builder.cert(CertChoice::Other),
                other => return Err(format!("--cert {other}: expected self, ca or other")),
            },
            "--until-stdin-eof" => {
                until_eof = true;
                builder
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'")),
        };
    }
    let hub = builder.start();
    let section = json!({
        "url": hub.url(),
        "api_key": hub.key(),
        "tls": {"fingerprint_sha256": hub.fingerprint()},
    });
    println!("{section}");
    eprintln!("felhom-hub-sim: serving {}", hub.url());
    let hub = std::sync::Arc::new(hub);
    let watcher = std::sync::Arc::clone(&hub);
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            let n = watcher
                .wait_for_reports(seen + 1, Duration::from_secs(3600))
                .len();
            if n > seen {
                let mut out = std::io::stdout().lock();
                for i in seen + 1..=n {
                    // A closed stdout only ends the announcements, not the server.
                    if writeln!(out, "report {i}")
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
                seen = n;
            }
        }
    });
    if until_eof {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}
