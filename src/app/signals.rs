//! The daemon's signals: SIGTERM and SIGINT trigger the shared shutdown (a second one
//! while stopping exits at once with code 1), SIGHUP re-reads the log level from the
//! configuration file (on error the old level stays and the reason is logged) and runs
//! the [`HupHooks`] the daemon registered (the revoked keys file is re-read there).
//!
//! Signals arrive through `signal-hook`'s self-pipe and are acted on by a thread of
//! their own, so no code of ours runs in a signal handler and none of it is `unsafe`.
//! This module never touches the state directory or Proxmox.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use signal_hook::SigId;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};

use crate::base::shutdown::Shutdown;
use crate::config::{self, Config, Mode};

/// What else SIGHUP re-reads: closures the daemon registers once it has built what they
/// reload, run in order on the signal thread.
#[derive(Clone, Default)]
pub(crate) struct HupHooks(Arc<Mutex<Vec<HupHook>>>);

/// One thing SIGHUP re-reads.
pub(crate) type HupHook = Box<dyn Fn() + Send>;

impl HupHooks {
    /// Runs `f` on every later SIGHUP.
    pub(crate) fn add(&self, f: HupHook) {
        crate::base::sync::lock(&self.0).push(f);
    }

    fn run(&self) {
        for f in crate::base::sync::lock(&self.0).iter() {
            f();
        }
    }
}

/// Watches SIGTERM, SIGINT and SIGHUP on a thread of its own, woken through a
/// self-pipe that `signal-hook` writes from the handler.
pub(crate) struct SignalWatcher {
    ids: Vec<SigId>,
    stop: Arc<AtomicBool>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatcher {
    pub(crate) fn install(
        shutdown: Shutdown,
        config_path: PathBuf,
        hooks: HupHooks,
    ) -> io::Result<SignalWatcher> {
        let (mut reader, writer) = UnixStream::pair()?;
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        let mut register = || -> io::Result<()> {
            for sig in [SIGTERM, SIGINT] {
                // Order matters: the exit is armed by the flag the next line sets, so
                // only a second signal exits at once.
                ids.push(signal_hook::flag::register_conditional_shutdown(
                    sig,
                    1,
                    Arc::clone(&term),
                )?);
                ids.push(signal_hook::flag::register(sig, Arc::clone(&term))?);
                ids.push(signal_hook::low_level::pipe::register(
                    sig,
                    writer.try_clone()?,
                )?);
            }
            ids.push(signal_hook::flag::register(SIGHUP, Arc::clone(&hup))?);
            ids.push(signal_hook::low_level::pipe::register(
                SIGHUP,
                writer.try_clone()?,
            )?);
            Ok(())
        };
        if let Err(e) = register() {
            for id in ids {
                signal_hook::low_level::unregister(id);
            }
            return Err(e);
        }
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            crate::error!(
                                signal_pipe_failed,
                                "signal pipe failed; signals now ignored",
                                error = e
                            );
                            break;
                        }
                    }
                    if thread_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if term.load(Ordering::SeqCst) && !shutdown.is_triggered() {
                        crate::info!(
                            stop_signal_received,
                            "termination signal received; stopping"
                        );
                        shutdown.trigger();
                    }
                    if hup.swap(false, Ordering::SeqCst) {
                        reload_log_level(&config_path);
                        hooks.run();
                    }
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                for id in ids {
                    signal_hook::low_level::unregister(id);
                }
                return Err(e);
            }
        };
        Ok(SignalWatcher {
            ids,
            stop,
            wake: writer,
            thread: Some(thread),
        })
    }

    /// Removes the handlers and stops the watcher thread.
    pub(crate) fn close(mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        self.stop.store(true, Ordering::SeqCst);
        // The watcher is blocked reading the pipe; one byte wakes it to see `stop`.
        if self.wake.write_all(&[0]).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

/// SIGHUP: re-reads the configuration for its log level; on error keeps the old one.
fn reload_log_level(config_path: &Path) {
    match Config::load(config_path, &config::process_env(), Mode::Run) {
        Ok(cfg) => {
            crate::base::log::set_level(cfg.log_level);
            crate::info!(
                log_level_changed,
                "configuration re-read on SIGHUP",
                log_level = cfg.log_level
            );
        }
        Err(e) => crate::warn!(
            sighup_reload_failed,
            "configuration re-read on SIGHUP failed; keeping the log level",
            error = e
        ),
    }
}
