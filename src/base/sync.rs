//! The one poison-tolerant lock.
//!
//! Every mutex in the agent guards state that stays consistent across a panic (each
//! durable update is guarded by its own poisoned flag, and in-memory state is rebuilt
//! from the durable files on restart), so a poisoned lock is taken as it is rather than
//! spreading the panic to every other thread. It never hides a panic: the thread that
//! panicked still unwinds and its worker reports it.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the guard even when another thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` with [`lock`]'s poison tolerance.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}
