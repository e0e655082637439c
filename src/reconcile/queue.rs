//! The per-guest work queue: the one choke point every Proxmox mutation passes.
//!
//! Each vmid has a lane, a thread fed by a channel, so jobs for one guest run strictly
//! one at a time in submit order. Lanes of different guests run in parallel, but never
//! more than `max_parallel` jobs at once (a counting semaphore). A lane with nothing to
//! do for a while ends its thread; the next submit starts a new one. A panicking job
//! fails only its own handle. This module never talks to Proxmox itself and never
//! reorders jobs of one guest.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a lane waits for more work before its thread ends.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why [`Queue::submit`] did not take a job.
#[derive(Debug)]
#[non_exhaustive]
pub enum SubmitError {
    /// [`Queue::close`] was called before this submit.
    Closed,
    /// The guest's lane thread could not be started (the system refused a thread).
    Spawn {
        /// The guest.
        vmid: u32,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The name the reconcile contract uses for a refused submit.
pub(crate) type QueueClosed = SubmitError;

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed => f.write_str("queue is closed: no new jobs are accepted"),
            SubmitError::Spawn { vmid, source } => {
                write!(f, "cannot start the lane thread of guest {vmid}: {source}")
            }
        }
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubmitError::Closed => None,
            SubmitError::Spawn { source, .. } => Some(source),
        }
    }
}

/// A job that panicked (or whose lane vanished before it ran): its result is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPanicked {
    /// The guest whose lane ran the job.
    pub vmid: u32,
    /// The panic message, when it was a string.
    pub message: String,
}

impl fmt::Display for JobPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job for guest {} panicked: {}", self.vmid, self.message)
    }
}

impl std::error::Error for JobPanicked {}

/// The result of one submitted job, to wait for.
#[derive(Debug)]
pub struct JobHandle<T> {
    vmid: u32,
    rx: Receiver<Result<T, JobPanicked>>,
}

impl<T> JobHandle<T> {
    /// The guest the job runs for.
    pub fn vmid(&self) -> u32 {
        self.vmid
    }

    /// Blocks until the job ran; its value, or [`JobPanicked`] if it panicked.
    pub fn wait(self) -> Result<T, JobPanicked> {
        match self.rx.recv() {
            Ok(r) => r,
            Err(_) => Err(JobPanicked {
                vmid: self.vmid,
                message: "the lane ended before the job reported".to_owned(),
            }),
        }
    }
}

/// Counting semaphore: at most `limit` permits out at once.
#[derive(Debug)]
struct Semaphore {
    out: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

/// A held permit; dropping it (also while unwinding) gives it back.
struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn acquire(&self) -> Permit<'_> {
        let mut out = relock(&self.out);
        while *out >= self.limit {
            out = self.freed.wait(out).unwrap_or_else(|p| p.into_inner());
        }
        *out += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut out = relock(&self.0.out);
        *out = out.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// Locks ignoring poison: every critical section here leaves the data consistent
/// before anything that could panic, and jobs never run under these locks.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Lane {
    id: u64,
    tx: Sender<Job>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_lane: u64,
    lanes: HashMap<u32, Lane>,
}

struct Inner {
    state: Mutex<State>,
    permits: Semaphore,
    idle: Duration,
}

/// The per-guest queue. Cheap to clone; clones share lanes and the bound.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = relock(&self.inner.state);
        f.debug_struct("Queue")
            .field("max_parallel", &self.inner.permits.limit)
            .field("lanes", &st.lanes.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl Queue {
    /// A queue running at most `max_parallel` jobs at once (0 is taken as 1); idle
    /// lanes end after [`DEFAULT_IDLE`].
    pub fn new(max_parallel: usize) -> Queue {
        Queue::with_idle(max_parallel, DEFAULT_IDLE)
    }

    /// Like [`Queue::new`] with the idle time after which a lane's thread ends.
    pub fn with_idle(max_parallel: usize, idle: Duration) -> Queue {
        Queue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                permits: Semaphore {
                    out: Mutex::new(0),
                    freed: Condvar::new(),
                    limit: max_parallel.max(1),
                },
                idle,
            }),
        }
    }

    /// The global bound on jobs running at once.
    pub fn max_parallel(&self) -> usize {
        self.inner.permits.limit
    }

    /// How many lanes have a live thread now.
    pub fn live_lanes(&self) -> usize {
        relock(&self.inner.state).lanes.len()
    }

    /// Queues `job` on the lane of `vmid`; it runs after every job submitted earlier
    /// for the same guest. Fails once [`Queue::close`] was called. A job must not wait
    /// for a later job of its own guest: that one runs only after it returns.
    pub fn submit<T: Send + 'static>(
        &self,
        vmid: u32,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JobHandle<T>, QueueClosed> {
        let (tx, rx) = mpsc::channel();
        let wrapped: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(job)).map_err(|payload| JobPanicked {
                vmid,
                message: panic_message(payload.as_ref()),
            });
            if let Err(p) = &result {
                crate::error!(
                    queue_job_panicked,
                    "queued job panicked",
                    vmid = vmid,
                    panic = p.message
                );
            }
            // The submitter may have dropped its handle; the result is then unwanted.
            let _ = tx.send(result);
        });

        let mut st = relock(&self.inner.state);
        if st.closed {
            return Err(SubmitError::Closed);
        }
        // Sending under the state lock pairs with the lane's idle check, which also
        // holds it: a lane never ends with a job sent to it but not run.
        let wrapped = match st.lanes.get(&vmid) {
            Some(lane) => match lane.tx.send(wrapped) {
                Ok(()) => return Ok(JobHandle { vmid, rx }),
                // The lane's receiver is gone (it ended); start a fresh one below.
                Err(mpsc::SendError(job)) => job,
            },
            None => wrapped,
        };
        let id = st.next_lane;
        st.next_lane += 1;
        let (lane_tx, lane_rx) = mpsc::channel::<Job>();
        let inner = Arc::clone(&self.inner);
        let thread = thread::Builder::new()
            .name(format!("lane-{vmid}"))
            .spawn(move || run_lane(&inner, vmid, id, &lane_rx))
            .map_err(|source| SubmitError::Spawn { vmid, source })?;
        // The receiver lives until the thread ends, and the thread cannot end before
        // it takes the state lock we hold; this send cannot fail.
        let _ = lane_tx.send(wrapped);
        st.lanes.insert(
            vmid,
            Lane {
                id,
                tx: lane_tx,
                thread,
            },
        );
        Ok(JobHandle { vmid, rx })
    }

    /// Stops taking jobs, lets every lane run what is already queued, and waits for
    /// the lanes to end. Idempotent. Call it from outside the queue: a job that closes
    /// its own queue would wait for its own lane.
    pub fn close(&self) {
        let lanes: Vec<Lane> = {
            let mut st = relock(&self.inner.state);
            st.closed = true;
            st.lanes.drain().map(|(_, l)| l).collect()
        };
        for lane in lanes {
            drop(lane.tx);
            if lane.thread.join().is_err() {
                crate::error!(
                    queue_lane_panicked,
                    "queue lane thread panicked outside a job"
                );
            }
        }
    }

    /// Whether [`Queue::close`] was called.
    pub fn is_closed(&self) -> bool {
        relock(&self.inner.state).closed
    }
}

fn run_lane(inner: &Inner, vmid: u32, id: u64, rx: &Receiver<Job>) {
    loop {
        match rx.recv_timeout(inner.idle) {
            Ok(job) => run_job(inner, job),
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut st = relock(&inner.state);
                match rx.try_recv() {
                    Ok(job) => {
                        drop(st);
                        run_job(inner, job);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                        if st.lanes.get(&vmid).is_some_and(|l| l.id == id) {
                            // Detach: a thread cannot join itself, and it ends now.
                            st.lanes.remove(&vmid);
                        }
                        return;
                    }
                }
            }
        }
    }
}

fn run_job(inner: &Inner, job: Job) {
    let _permit = inner.permits.acquire();
    job();
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
