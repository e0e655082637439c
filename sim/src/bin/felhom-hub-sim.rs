//! Runs the hub simulator as a process, for demos, manual runs and the budget script.
//!
//! Prints one JSON line on stdout: the `hub` section of an agent config that points at it
//! (url, bearer key, pinned fingerprint). Then one line `report N` each time it accepts
//! the N-th report, so a script can wait for the agent's first report. Serves until
//! killed, or until stdin closes with `--until-stdin-eof`. `--desired-state FILE` serves
//! that desired-state document (it must keep to `desired-state.schema.json`);
//! `--auto-ack` acknowledges every signed-op result a report carries in its answer. Demo code only; never shipped
//! with the agent.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use felhom_sim::{HubSim, demo};
use serde_json::json;

const USAGE: &str = "usage: felhom-hub-sim [--key KEY] [--poll SECONDS] [--cert self|ca|other] [--desired-state FILE] [--auto-ack] [--until-stdin-eof]";

fn main() -> ExitCode {
    demo::main("felhom-hub-sim", USAGE, run)
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut builder = HubSim::builder();
    let mut desired = None;
    let mut auto_ack = false;
    let mut args = demo::Args::new(args);
    while let Some(arg) = args.next_flag() {
        builder = match arg.as_str() {
            "--key" => builder.key(&args.value("--key")?),
            "--poll" => {
                let secs = demo::number("--poll", &args.value("--poll")?, "seconds")?;
                builder.default_envelope(json!({
                    "poll_interval_seconds": secs,
                    "blocked": false,
                    "desired_generation": 0,
                    "has_signed_ops": false
                }))
            }
            "--cert" => builder.cert(demo::cert_choice(&args.value("--cert")?)?),
            "--auto-ack" => {
                auto_ack = true;
                builder
            }
            "--desired-state" => {
                let file = args.value("--desired-state")?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("--desired-state {file}: {e}"))?;
                let doc: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("--desired-state {file}: {e}"))?;
                let problems =
                    felhom_sim::schema::validate(felhom_sim::schema::DESIRED_STATE, &doc);
                if !problems.is_empty() {
                    return Err(format!("--desired-state {file}: {}", problems.join("; ")));
                }
                desired = Some(doc);
                builder
            }
            other => return Err(format!("unknown argument '{other}'")),
        };
    }
    if args.help {
        println!("{USAGE}");
        return Ok(());
    }
    let hub = builder.start();
    hub.auto_ack_signed_op_results(auto_ack);
    if let Some(doc) = &desired {
        hub.publish_desired_state(doc);
    }
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
    demo::serve(args.until_stdin_eof);
    Ok(())
}
