//! Progress counters shared with whoever displays them (CLI bars, operator status).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    /// Archive bytes read so far and expected in total (0 when unknown).
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// Blob bytes sent to the registry.
    pub pushed: AtomicU64,
    phase: Mutex<String>,
}

impl Progress {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }
    pub fn set_phase(&self, p: impl Into<String>) {
        *self.phase.lock().expect("phase lock") = p.into();
    }
    pub fn phase(&self) -> String {
        self.phase.lock().expect("phase lock").clone()
    }
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// Counts bytes read through it into a Progress.
pub struct Counting<R> {
    pub inner: R,
    pub progress: std::sync::Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}
