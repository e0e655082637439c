//! Runs the Proxmox VE simulator as a process, for demos and manual runs of the agent.
//!
//! Prints one JSON line on stdout: the `proxmox` section of an agent config that points at
//! it (url, node, token, pinned fingerprint). Then serves until killed, or until stdin
//! closes with `--until-stdin-eof`. Demo code only; never shipped with the agent.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use felhom_sim::{CertChoice, GuestSeed, ProxmoxSim};

const USAGE: &str = "usage: felhom-pve-sim [--node NAME] [--guest VMID[:NAME[:running]]]... \
[--backup VMID:STAMP]... [--task-ms N] [--cert self|ca|other] [--async-config] [--until-stdin-eof]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("felhom-pve-sim: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
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
    let mut until_eof = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        builder = match arg.as_str() {
            "--node" => builder.node(&value("--node")?),
            "--guest" => {
                guests += 1;
                builder.guest(parse_guest(&value("--guest")?)?)
            }
            "--backup" => {
                let spec = value("--backup")?;
                let (vmid, stamp) = spec
                    .split_once(':')
                    .and_then(|(v, s)| Some((v.parse::<u32>().ok()?, s.to_string())))
                    .ok_or_else(|| format!("--backup {spec}: expected VMID:YYYY_MM_DD-HH_MM_SS"))?;
                builder.backup(vmid, &stamp)
            }
            "--task-ms" => {
                let v = value("--task-ms")?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--task-ms {v}: not a number of milliseconds"))?;
                builder.task_duration(Duration::from_millis(ms))
            }
            "--cert" => match value("--cert")?.as_str() {
                "self" => builder.cert(CertChoice::SelfSigned),
                "ca" => builder.cert(CertChoice::CaSigned),
                "other" => builder.cert(CertChoice::Other),
                other => return Err(format!("--cert {other}: expected self, ca or other")),
            },
            "--async-config" => builder.sync_config_put(false),
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
    if until_eof {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        sim.shutdown();
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}
