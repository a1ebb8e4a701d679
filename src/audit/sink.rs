//! Where audit lines go: a file (appended) or stdout. Request tasks append serialized lines to a shared
//! buffer; one writer thread drains it at most every [`BATCH_WINDOW`] (sooner past [`HIGH_WATER`]).
//! A request never waits on the disk, and a busy proxy costs one wake-up and one write per batch rather
//! than a thread hand-off per request (on one core that hand-off cost more than the rest of the audit).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::AuditEvent;
use crate::config::AuditTarget;

/// How long the writer lets lines accumulate before writing them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer at once.
const HIGH_WATER: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    /// Flushes asked for and flushes done, so `flush` can wait for its own.
    requested: u64,
    written: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake_writer: Condvar,
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock cannot leave `Pending` inconsistent: keep going.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The audit log. Cloning shares the same writer; when the last clone is dropped the writer writes
/// what is left and stops.
#[derive(Debug, Clone)]
pub struct AuditSink {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

#[derive(Debug)]
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake_writer.notify_one();
    }
}

impl AuditSink {
    /// Opens the target (creating the file, append-only) and starts the writer thread.
    pub fn open(target: &AuditTarget) -> std::io::Result<AuditSink> {
        let writer: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        let shared = Arc::new(Shared::default());
        let for_writer = shared.clone();
        thread::Builder::new().name("hfgate-audit".into()).spawn(move || write_loop(writer, &for_writer))?;
        Ok(AuditSink { _closer: Arc::new(Closer(shared.clone())), shared })
    }

    /// Queues one event, serialized straight into the shared buffer.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let mut pending = self.shared.lock();
        let was_empty = pending.lines.is_empty();
        let start = pending.lines.len();
        if serde_json::to_writer(&mut pending.lines, event).is_err() {
            pending.lines.truncate(start);
            drop(pending);
            tracing::error!("an audit event could not be serialized");
            return;
        }
        pending.lines.push(b'\n');
        let wake = was_empty || pending.lines.len() >= HIGH_WATER;
        drop(pending);
        if wake {
            self.shared.wake_writer.notify_one();
        }
    }

    /// Waits until everything recorded so far is written and flushed.
    pub fn flush(&self) {
        let mut pending = self.shared.lock();
        pending.requested += 1;
        let target = pending.requested;
        self.shared.wake_writer.notify_one();
        while pending.written < target && !pending.closed {
            pending = self.shared.written.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(mut out: Box<dyn Write + Send>, shared: &Shared) {
    let mut batch = Vec::with_capacity(HIGH_WATER);
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && pending.requested == pending.written && !pending.closed {
            pending = shared.wake_writer.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        // Let a burst accumulate, unless someone is waiting for a flush, the buffer is large, or we stop.
        if pending.requested == pending.written && pending.lines.len() < HIGH_WATER && !pending.closed {
            pending = shared
                .wake_writer
                .wait_timeout(pending, BATCH_WINDOW)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        std::mem::swap(&mut batch, &mut pending.lines);
        let target = pending.requested;
        let closing = pending.closed;
        drop(pending);
        if !batch.is_empty() {
            if let Err(err) = out.write_all(&batch) {
                tracing::error!(%err, "cannot write the audit log");
            }
            batch.clear();
        }
        if let Err(err) = out.flush() {
            tracing::error!(%err, "cannot flush the audit log");
        }
        let mut pending = shared.lock();
        pending.written = pending.written.max(target);
        let done = closing && pending.lines.is_empty();
        drop(pending);
        shared.written.notify_all();
        if done {
            return;
        }
    }
}
