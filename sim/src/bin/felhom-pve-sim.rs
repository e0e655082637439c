//! Runs the Proxmox VE simulator as a process, for demos and manual runs of the agent.
//!
//! Prints one JSON line on stdout: the `proxmox` section of an agent config that points at
//! it (url, node, token, pinned fingerprint). Then serves until killed, or until stdin
//! closes with `--until-stdin-eof`. Demo code only; never shipped with the agent.

use std::process::ExitCode;
use std::time::Duration;

use felhom_sim::{GuestSeed, ProxmoxSim, demo};

const USAGE: &str = "usage: felhom-pve-sim [--node NAME] [--guest VMID[:NAME[:running]]]... \
[--backup VMID:STAMP]... [--task-ms N] [--cert self|ca|other] [--async-config] [--until-stdin-eof]";

fn main() -> ExitCode {
    demo::main("felhom-pve-sim", USAGE, run)
}

fn parse_guest(spec: &str) -> Result<GuestSeed, String> {
    let mut parts = spec.split(':');
    let vmid: u32 = parts
        .next()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v >= 100)
        .ok_or_else(|| format!("--guest {spec}: VMID must be an integer >= 100"))?;
    let name = parts.next().map_or(format!("ct{vmid}"), str::to_string);
    let running = match parts.next() {
        None | Some("stopped") => false,
        Some("running") => true,
        Some(other) => {
            return Err(format!(
                "--guest {spec}: state '{other}' is not running|stopped"
            ));
        }
    };
    Ok(GuestSeed::new(vmid, &name).running(running))
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut builder = ProxmoxSim::builder();
    let mut guests = 0;
    let mut args = demo::Args::new(args);
    while let Some(arg) = args.next_flag() {
        builder = match arg.as_str() {
            "--node" => builder.node(&args.value("--node")?),
            "--guest" => {
                guests += 1;
                builder.guest(parse_guest(&args.value("--guest")?)?)
            }
            "--backup" => {
                let spec = args.value("--backup")?;
                let (vmid, stamp) = spec
                    .split_once(':')
                    .and_then(|(v, s)| Some((v.parse::<u32>().ok()?, s.to_string())))
                    .ok_or_else(|| format!("--backup {spec}: expected VMID:YYYY_MM_DD-HH_MM_SS"))?;
                builder.backup(vmid, &stamp)
            }
            "--task-ms" => {
                let ms = demo::number("--task-ms", &args.value("--task-ms")?, "milliseconds")?;
                builder.task_duration(Duration::from_millis(ms))
            }
            "--cert" => builder.cert(demo::cert_choice(&args.value("--cert")?)?),
            "--async-config" => builder.sync_config_put(false),
            other => return Err(format!("unknown argument '{other}'")),
        };
    }
    if args.help {
        println!("{USAGE}");
        return Ok(());
    }
    if guests == 0 {
        builder = builder
            .guest(
                GuestSeed::new(100, "web")
                    .running(true)
                    .description("demo web server"),
            )
            .guest(GuestSeed::new(101, "db").cores(4).memory_mib(2048));
    }
    let sim = builder.start();
    let token = sim.token_header();
    let (token_id, secret) = token
        .trim_start_matches("PVEAPIToken=")
        .rsplit_once('=')
        .ok_or("token header has no '='")?;
    let section = serde_json::json!({
        "url": sim.url(),
        "node": sim.node(),
        "token_id": token_id,
        "token_secret": secret,
        "tls": {"fingerprint_sha256": sim.fingerprint()},
    });
    println!("{section}");
    eprintln!(
        "felhom-pve-sim: serving {} (node {}, guests {:?})",
        sim.url(),
        sim.node(),
        sim.guest_ids()
    );
    demo::serve(args.until_stdin_eof);
    sim.shutdown();
    Ok(())
}
