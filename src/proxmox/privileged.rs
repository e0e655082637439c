//! The few host operations the Proxmox API cannot do, run as root through an argv
//! runner: create the golden container (`pct create` with the keyctl feature), mount
//! a USB disk by filesystem UUID, read SMART data and sensors, ask systemd whether a
//! unit is active.
//!
//! Programs are fixed absolute paths, arguments are passed as an argv (never through
//! a shell), every argument is checked against a strict pattern first, and each run
//! has a timeout and an output cap. This module never talks to the network; the API
//! client never spawns a process. A test reads both sources to keep it that way.

#[cfg(test)]
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::validate::{self, InvalidArgument, check};

mod exec;
#[cfg(test)]
use crate::base::sync::lock;
pub use exec::BOOT_CHECK_PROGRAM;

/// What a finished program left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output (at most the runner's cap).
    pub stdout: Vec<u8>,
    /// Standard error (at most the runner's cap).
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Why a program could not be run to completion.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// The program path is not absolute (the runner never searches `PATH`).
    NotAbsolute {
        /// The program.
        program: PathBuf,
    },
    /// The program could not be started (missing, not executable).
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// It ran longer than allowed and was killed.
    Timeout {
        /// The program.
        program: PathBuf,
        /// The limit.
        after: Duration,
    },
    /// It wrote more than allowed to stdout or stderr; reading stopped and it was
    /// killed.
    OutputTooLarge {
        /// The program.
        program: PathBuf,
        /// The cap in bytes.
        limit: usize,
    },
    /// Waiting for it or reading its output failed.
    Io {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotAbsolute { program } => {
                write!(f, "{}: program path is not absolute", program.display())
            }
            RunError::Spawn { program, source } => {
                write!(f, "{}: cannot start: {source}", program.display())
            }
            RunError::Timeout { program, after } => write!(
                f,
                "{}: killed after running {}s",
                program.display(),
                after.as_secs()
            ),
            RunError::OutputTooLarge { program, limit } => write!(
                f,
                "{}: killed after writing more than {limit} bytes",
                program.display()
            ),
            RunError::Io { program, source } => write!(f, "{}: {source}", program.display()),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Spawn { source, .. } | RunError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs a program with arguments. Implementations must not involve a shell.
pub trait Runner: Send + Sync {
    /// Runs `program` (an absolute path) with `args` and returns its output, whatever
    /// its exit code.
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError>;
}

impl<R: Runner + ?Sized> Runner for Arc<R> {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError> {
        (**self).run(program, args)
    }
}

/// The real runner: a child process with a clean environment, stdin closed, output
/// captured up to a cap, killed at the timeout.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    /// Longest run allowed.
    pub timeout: Duration,
    /// Most bytes kept from stdout and from stderr each.
    pub max_output: usize,
}

impl Default for SystemRunner {
    /// 10 minutes (creating a container unpacks a template), 4 MiB of output.
    fn default() -> Self {
        SystemRunner {
            timeout: Duration::from_secs(600),
            max_output: 4 * 1024 * 1024,
        }
    }
}

fn read_capped(
    mut from: impl Read + Send + 'static,
    cap: usize,
) -> std::thread::JoinHandle<io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // One byte past the cap tells "too large" from "exactly the cap"; dropping the
        // pipe afterwards makes a chatty child fail its next write and end.
        (&mut from).take(cap as u64 + 1).read_to_end(&mut buf)?;
        Ok(buf)
    })
}

impl Runner for SystemRunner {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError> {
        if !program.is_absolute() {
            return Err(RunError::NotAbsolute {
                program: program.to_path_buf(),
            });
        }
        let io_err = |source| RunError::Io {
            program: program.to_path_buf(),
            source,
        };
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: program.to_path_buf(),
                source,
            })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_err(io::Error::other("child pipes missing")));
        };
        let out = read_capped(stdout, self.max_output);
        let err = read_capped(stderr, self.max_output);
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(5);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = (out.join(), err.join());
                    return Err(RunError::Timeout {
                        program: program.to_path_buf(),
                        after: self.timeout,
                    });
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io_err(e));
                }
            }
        };
        let joined = |h: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("output reader panicked")))
        };
        let stdout = joined(out).map_err(io_err)?;
        let stderr = joined(err).map_err(io_err)?;
        if stdout.len() > self.max_output || stderr.len() > self.max_output {
            return Err(RunError::OutputTooLarge {
                program: program.to_path_buf(),
                limit: self.max_output,
            });
        }
        Ok(Output {
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// A runner for tests: records every call and answers from a queue (exit 0 with no
/// output once the queue is empty). Never starts a process.
#[derive(Debug, Default)]
#[cfg(test)]
pub(crate) struct FakeRunner {
    calls: Mutex<Vec<(PathBuf, Vec<String>)>>,
    replies: Mutex<VecDeque<Result<Output, RunError>>>,
}

#[cfg(test)]
impl FakeRunner {
    /// An empty fake.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Queues the answer to the next call.
    pub(crate) fn reply(&self, r: Result<Output, RunError>) {
        lock(&self.replies).push_back(r);
    }

    /// Queues an exit with `code` and this stdout.
    pub(crate) fn reply_with(&self, code: i32, stdout: &str) {
        self.reply(Ok(Output {
            code: Some(code),
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        }));
    }

    /// Every call so far: program and arguments.
    pub(crate) fn calls(&self) -> Vec<(PathBuf, Vec<String>)> {
        lock(&self.calls).clone()
    }
}

#[cfg(test)]
impl Runner for FakeRunner {
    fn run(&self, program: &Path, args: &[String]) -> Result<Output, RunError> {
        lock(&self.calls).push((program.to_path_buf(), args.to_vec()));
        lock(&self.replies).pop_front().unwrap_or_else(|| {
            Ok(Output {
                code: Some(0),
                ..Output::default()
            })
        })
    }
}

/// Where the programs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    /// `pct`.
    pub pct: PathBuf,
    /// `mount`.
    pub mount: PathBuf,
    /// `smartctl`.
    pub smartctl: PathBuf,
    /// `sensors`.
    pub sensors: PathBuf,
    /// `systemctl`.
    pub systemctl: PathBuf,
}

impl Default for Programs {
    /// The paths on Proxmox VE (Debian, merged /usr).
    fn default() -> Self {
        Programs {
            pct: PathBuf::from("/usr/sbin/pct"),
            mount: PathBuf::from("/usr/bin/mount"),
            smartctl: PathBuf::from("/usr/sbin/smartctl"),
            sensors: PathBuf::from("/usr/bin/sensors"),
            systemctl: PathBuf::from("/usr/bin/systemctl"),
        }
    }
}

impl Programs {
    /// The default paths, with `mount` taken from `/bin` when `/usr/bin` has none
    /// (hosts without merged /usr).
    pub fn detect() -> Self {
        let mut p = Programs::default();
        if !p.mount.exists() && Path::new("/bin/mount").exists() {
            p.mount = PathBuf::from("/bin/mount");
        }
        p
    }
}

/// Why a privileged operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PrivilegedError {
    /// An argument failed its pattern; nothing was run.
    Argument(InvalidArgument),
    /// The program could not be run to completion.
    Run(RunError),
    /// It ran and reported failure.
    Failed {
        /// The program.
        program: PathBuf,
        /// Its exit code (`None`: killed by a signal).
        code: Option<i32>,
        /// The end of what it said (stderr, else stdout), escaped and bounded.
        message: String,
    },
    /// It succeeded but its output is not what was expected.
    Decode {
        /// The program.
        program: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl fmt::Display for PrivilegedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegedError::Argument(e) => write!(f, "refused: {e}"),
            PrivilegedError::Run(e) => write!(f, "{e}"),
            PrivilegedError::Failed {
                program,
                code,
                message,
            } => {
                write!(f, "{} failed", program.display())?;
                match code {
                    Some(c) => write!(f, " (exit {c})")?,
                    None => write!(f, " (killed by a signal)")?,
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            PrivilegedError::Decode { program, detail } => {
                write!(f, "{}: unexpected output: {detail}", program.display())
            }
        }
    }
}

impl std::error::Error for PrivilegedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PrivilegedError::Argument(e) => Some(e),
            PrivilegedError::Run(e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvalidArgument> for PrivilegedError {
    fn from(e: InvalidArgument) -> Self {
        PrivilegedError::Argument(e)
    }
}

/// Untrusted program output made printable: invalid UTF-8 replaced, control
/// characters escaped, at most `limit` bytes kept.
fn printable(text: &str, limit: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= limit {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn failure_message(o: &Output) -> String {
    let text = if o.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &o.stderr
    } else {
        &o.stdout
    };
    let trimmed = String::from_utf8_lossy(text);
    let trimmed = trimmed.trim();
    // The end of the output is where programs put their final word.
    let start = trimmed.len().saturating_sub(512);
    let start = (start..=trimmed.len())
        .find(|&i| trimmed.is_char_boundary(i))
        .unwrap_or(trimmed.len());
    printable(&trimmed[start..], 512)
}

/// The golden container `pct create` makes: unprivileged, with `keyctl` and
/// `nesting` (what the API refuses to set for a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenLxc {
    /// New vmid.
    pub vmid: u32,
    /// Template volume, e.g. `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`.
    pub template: String,
    /// Storage for the root disk.
    pub storage: String,
    /// Root disk size, GiB.
    pub rootfs_gib: u32,
    /// Host name.
    pub hostname: String,
    /// CPU cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Bridge for `eth0` with DHCP, if any.
    pub bridge: Option<String>,
}

fn bridge_name(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 15 {
        return Err("must be 1 to 15 characters");
    }
    if !b[0].is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

fn fs_uuid(s: &str) -> Result<(), &'static str> {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split('-').collect();
    let ok = match parts.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [a, b] => hex(a, 4) && hex(b, 4),
        [a] => hex(a, 16),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("must be a filesystem UUID (8-4-4-4-12 hex, FAT XXXX-XXXX or NTFS 16 hex)")
    }
}

fn mountpoint(s: &str) -> Result<(), &'static str> {
    let Some(rest) = s.strip_prefix("/mnt/") else {
        return Err("must be under /mnt/");
    };
    if s.len() > 255 {
        return Err("must be at most 255 characters");
    }
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("must not have empty, '.' or '..' segments");
        }
        if seg.starts_with('-') {
            return Err("segments must not start with '-'");
        }
        if !seg
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err("may contain only letters, digits, '.', '_', '-' and '/'");
        }
    }
    Ok(())
}

fn block_device(s: &str) -> Result<(), &'static str> {
    const REFUSED: &str = "must be /dev/sdX or /dev/nvmeNnM";
    if let Some(letters) = s.strip_prefix("/dev/sd") {
        if !letters.is_empty()
            && letters.len() <= 3
            && letters.bytes().all(|b| b.is_ascii_lowercase())
        {
            return Ok(());
        }
        return Err(REFUSED);
    }
    if let Some(rest) = s.strip_prefix("/dev/nvme") {
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if let Some((ctrl, ns)) = rest.split_once('n')
            && digits(ctrl)
            && digits(ns)
        {
            return Ok(());
        }
    }
    Err(REFUSED)
}

fn unit_name(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if !b[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'_' | b'.' | b'@' | b'-'))
    {
        return Err("may contain only letters, digits and ':_.@-'");
    }
    Ok(())
}

/// The privileged operations, over a runner.
#[derive(Debug)]
pub struct Privileged<R: Runner> {
    runner: R,
    programs: Programs,
}

impl<R: Runner> Privileged<R> {
    /// Operations on the host's programs ([`Programs::detect`]).
    pub fn new(runner: R) -> Self {
        Privileged {
            runner,
            programs: Programs::detect(),
        }
    }

    /// Operations with explicit program paths (tests).
    pub fn with_programs(runner: R, programs: Programs) -> Self {
        Privileged { runner, programs }
    }

    /// The program paths in use.
    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    fn run(&self, program: &Path, args: Vec<String>) -> Result<Output, PrivilegedError> {
        crate::debug!(
            privileged_run,
            "privileged run",
            program = program.display(),
            args = args.join(" ")
        );
        self.runner
            .run(program, &args)
            .map_err(PrivilegedError::Run)
    }

    fn run_ok(&self, program: &Path, args: Vec<String>) -> Result<Output, PrivilegedError> {
        let out = self.run(program, args)?;
        if out.success() {
            Ok(out)
        } else {
            Err(PrivilegedError::Failed {
                program: program.to_path_buf(),
                code: out.code,
                message: failure_message(&out),
            })
        }
    }

    fn json(program: &Path, out: &Output) -> Result<Value, PrivilegedError> {
        match serde_json::from_slice::<Value>(&out.stdout) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(PrivilegedError::Decode {
                program: program.to_path_buf(),
                detail: "JSON output is not an object".to_string(),
            }),
            Err(e) => Err(PrivilegedError::Decode {
                program: program.to_path_buf(),
                detail: format!("not JSON: {e}"),
            }),
        }
    }

    /// `pct create VMID TEMPLATE --hostname H --rootfs STORAGE:GIB --cores N
    /// --memory MIB --features keyctl=1,nesting=1 --unprivileged 1 [--net0 ...]`.
    pub fn create_golden_lxc(&self, spec: &GoldenLxc) -> Result<(), PrivilegedError> {
        validate::vmid(spec.vmid)?;
        check("template", &spec.template, validate::volid)?;
        check("storage", &spec.storage, validate::storage_id)?;
        check("hostname", &spec.hostname, validate::hostname)?;
        if !(1..=65_536).contains(&spec.rootfs_gib) {
            return Err(InvalidArgument::new(
                "rootfs_gib",
                &spec.rootfs_gib.to_string(),
                "must be 1 to 65536",
            )
            .into());
        }
        if !(1..=512).contains(&spec.cores) {
            return Err(
                InvalidArgument::new("cores", &spec.cores.to_string(), "must be 1 to 512").into(),
            );
        }
        if !(16..=16 * 1024 * 1024).contains(&spec.memory_mib) {
            return Err(InvalidArgument::new(
                "memory_mib",
                &spec.memory_mib.to_string(),
                "must be 16 to 16777216",
            )
            .into());
        }
        let mut args: Vec<String> = vec![
            "create".into(),
            spec.vmid.to_string(),
            spec.template.clone(),
            "--hostname".into(),
            spec.hostname.clone(),
            "--rootfs".into(),
            format!("{}:{}", spec.storage, spec.rootfs_gib),
            "--cores".into(),
            spec.cores.to_string(),
            "--memory".into(),
            spec.memory_mib.to_string(),
            "--features".into(),
            "keyctl=1,nesting=1".into(),
            "--unprivileged".into(),
            "1".into(),
        ];
        if let Some(bridge) = &spec.bridge {
            check("bridge", bridge, bridge_name)?;
            args.push("--net0".into());
            args.push(format!("name=eth0,bridge={bridge},ip=dhcp"));
        }
        self.run_ok(&self.programs.pct, args).map(|_| ())
    }

    /// `mount -o nodev,nosuid,noexec UUID=... /mnt/...`.
    pub fn mount_usb_by_uuid(&self, uuid: &str, mount_at: &str) -> Result<(), PrivilegedError> {
        check("uuid", uuid, fs_uuid)?;
        check("mountpoint", mount_at, mountpoint)?;
        self.run_ok(
            &self.programs.mount,
            vec![
                "-o".into(),
                "nodev,nosuid,noexec".into(),
                format!("UUID={uuid}"),
                mount_at.to_string(),
            ],
        )
        .map(|_| ())
    }

    /// `smartctl --json -a DEVICE`. smartctl's exit code is a bit mask where only
    /// bits 0 and 1 mean it could not do its job; the others report disk health and
    /// come with full JSON, which is returned.
    pub fn smart(&self, device: &str) -> Result<Value, PrivilegedError> {
        check("device", device, block_device)?;
        let program = &self.programs.smartctl;
        let out = self.run(
            program,
            vec!["--json".into(), "-a".into(), device.to_string()],
        )?;
        match out.code {
            Some(code) if code & 0b11 == 0 => Self::json(program, &out),
            code => Err(PrivilegedError::Failed {
                program: program.to_path_buf(),
                code,
                message: failure_message(&out),
            }),
        }
    }

    /// `sensors -j`.
    pub fn sensors(&self) -> Result<Value, PrivilegedError> {
        let program = &self.programs.sensors;
        let out = self.run_ok(program, vec!["-j".into()])?;
        Self::json(program, &out)
    }

    /// `systemctl is-active -- UNIT`: the state word it prints (`active`,
    /// `inactive`, `failed`, `activating`, ...). A non-zero exit with a state word is
    /// an answer, not an error.
    pub fn service_is_active(&self, unit: &str) -> Result<String, PrivilegedError> {
        check("unit", unit, unit_name)?;
        let program = &self.programs.systemctl;
        let out = self.run(
            program,
            vec!["is-active".into(), "--".into(), unit.to_string()],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let state = text.lines().next().unwrap_or("").trim();
        let is_word = !state.is_empty()
            && state.len() <= 32
            && state.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        if is_word {
            Ok(state.to_string())
        } else {
            Err(PrivilegedError::Failed {
                program: program.to_path_buf(),
                code: out.code,
                message: failure_message(&out),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (Arc<FakeRunner>, Privileged<Arc<FakeRunner>>) {
        let f = Arc::new(FakeRunner::new());
        (f.clone(), Privileged::with_programs(f, Programs::default()))
    }

    fn golden() -> GoldenLxc {
        GoldenLxc {
            vmid: 9000,
            template: "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst".into(),
            storage: "local-lvm".into(),
            rootfs_gib: 8,
            hostname: "golden".into(),
            cores: 2,
            memory_mib: 1024,
            bridge: Some("vmbr0".into()),
        }
    }

    #[test]
    fn create_golden_lxc_argv() {
        let (f, p) = fake();
        p.create_golden_lxc(&golden()).unwrap();
        let calls = f.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, PathBuf::from("/usr/sbin/pct"));
        assert_eq!(
            calls[0].1,
            [
                "create",
                "9000",
                "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
                "--hostname",
                "golden",
                "--rootfs",
                "local-lvm:8",
                "--cores",
                "2",
                "--memory",
                "1024",
                "--features",
                "keyctl=1,nesting=1",
                "--unprivileged",
                "1",
                "--net0",
                "name=eth0,bridge=vmbr0,ip=dhcp"
            ]
        );
    }

    #[test]
    fn every_argument_is_checked_and_named() {
        let (f, p) = fake();
        let name = |e: PrivilegedError| match e {
            PrivilegedError::Argument(a) => a.name,
            other => panic!("expected an argument refusal, got {other}"),
        };
        let mut g = golden();
        g.vmid = 7;
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "vmid");
        let mut g = golden();
        g.template = "local:vztmpl/x;rm -rf /".into();
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "template");
        let mut g = golden();
        g.hostname = "--help".into();
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "hostname");
        let mut g = golden();
        g.bridge = Some("vmbr0,firewall=0".into());
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "bridge");
        let mut g = golden();
        g.storage = "local lvm".into();
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "storage");
        let mut g = golden();
        g.cores = 0;
        assert_eq!(name(p.create_golden_lxc(&g).unwrap_err()), "cores");

        for bad in ["", "not-a-uuid", "1234", "../../etc", "-o"] {
            assert_eq!(
                name(p.mount_usb_by_uuid(bad, "/mnt/usb").unwrap_err()),
                "uuid"
            );
        }
        let uuid = "0f3b6c2e-1a2b-4c3d-8e9f-0123456789ab";
        for bad in [
            "/mnt",
            "/mnt/",
            "/etc",
            "/mnt/../etc",
            "/mnt/a b",
            "/mnt/-x",
            "/mnt//a",
        ] {
            assert_eq!(
                name(p.mount_usb_by_uuid(uuid, bad).unwrap_err()),
                "mountpoint",
                "{bad}"
            );
        }
        for bad in [
            "/dev/sda1",
            "/dev/sd",
            "sda",
            "/dev/nvme0",
            "/dev/nvme0n1p1",
            "/dev/mapper/x",
        ] {
            assert_eq!(name(p.smart(bad).unwrap_err()), "device", "{bad}");
        }
        for bad in ["", "-H", "a b", "x;y", "../x"] {
            assert_eq!(name(p.service_is_active(bad).unwrap_err()), "unit", "{bad}");
        }
        assert!(f.calls().is_empty(), "nothing ran for a refused argument");
    }

    #[test]
    fn mount_smart_sensors_argv_and_answers() {
        let (f, p) = fake();
        p.mount_usb_by_uuid("ABCD-1234", "/mnt/usb-backup").unwrap();
        f.reply_with(
            4,
            r#"{"smartctl":{"exit_status":4},"device":{"name":"/dev/sda"}}"#,
        );
        let smart = p.smart("/dev/sda").unwrap();
        assert_eq!(smart["device"]["name"], "/dev/sda");
        f.reply_with(2, "");
        assert!(matches!(
            p.smart("/dev/nvme0n1").unwrap_err(),
            PrivilegedError::Failed { code: Some(2), .. }
        ));
        f.reply_with(0, r#"{"coretemp-isa-0000":{}}"#);
        assert!(p.sensors().unwrap().is_object());
        f.reply_with(0, "not json");
        assert!(matches!(
            p.sensors().unwrap_err(),
            PrivilegedError::Decode { .. }
        ));
        let calls = f.calls();
        assert_eq!(
            calls[0].1,
            [
                "-o",
                "nodev,nosuid,noexec",
                "UUID=ABCD-1234",
                "/mnt/usb-backup"
            ]
        );
        assert_eq!(calls[0].0, PathBuf::from("/usr/bin/mount"));
        assert_eq!(calls[1].1, ["--json", "-a", "/dev/sda"]);
        assert_eq!(calls[3].1, ["-j"]);
    }

    #[test]
    fn service_state_is_an_answer_even_on_nonzero_exit() {
        let (f, p) = fake();
        f.reply_with(0, "active\n");
        assert_eq!(p.service_is_active("cloudflared").unwrap(), "active");
        f.reply_with(3, "inactive\n");
        assert_eq!(
            p.service_is_active("cloudflared.service").unwrap(),
            "inactive"
        );
        f.reply(Ok(Output {
            code: Some(1),
            stdout: Vec::new(),
            stderr: b"Failed to connect to bus".to_vec(),
        }));
        let e = p.service_is_active("cloudflared").unwrap_err();
        assert!(e.to_string().contains("Failed to connect to bus"), "{e}");
        assert_eq!(f.calls()[0].1, ["is-active", "--", "cloudflared"]);
    }

    #[test]
    fn system_runner_captures_and_bounds() {
        let r = SystemRunner {
            timeout: Duration::from_secs(20),
            max_output: 1024,
        };
        let out = r
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "echo out; echo err >&2; exit 3".into()],
            )
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let big = r
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "yes | head -c 100000".into()],
            )
            .unwrap_err();
        assert!(
            matches!(big, RunError::OutputTooLarge { limit: 1024, .. }),
            "{big}"
        );
        assert!(matches!(
            r.run(Path::new("sh"), &[]).unwrap_err(),
            RunError::NotAbsolute { .. }
        ));
        assert!(matches!(
            r.run(Path::new("/nonexistent/prog"), &[]).unwrap_err(),
            RunError::Spawn { .. }
        ));
        let slow = SystemRunner {
            timeout: Duration::from_millis(100),
            max_output: 1024,
        };
        assert!(matches!(
            slow.run(Path::new("/bin/sleep"), &["30".into()])
                .unwrap_err(),
            RunError::Timeout { .. }
        ));
    }
}
