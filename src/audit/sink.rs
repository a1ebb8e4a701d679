//! Where audit lines go: a file (appended) or stdout, written by one thread that flushes whenever its
//! queue runs dry, so a burst costs one write and a quiet period leaves nothing buffered.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use super::AuditEvent;
use crate::config::AuditTarget;

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

impl AuditSink {
    /// Opens the target (creating the file, append-only) and starts the writer thread.
    pub fn open(target: &AuditTarget) -> std::io::Result<AuditSink> {
        let writer: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("hfgate-audit".into())
            .spawn(move || write_loop(writer, receiver))?;
        Ok(AuditSink { sender })
    }

    /// Queues one event.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, event).is_ok() {
            line.push(b'\n');
            if self.sender.send(Message::Line(line)).is_err() {
                tracing::error!("audit writer has stopped; an audit event was lost");
            }
        }
    }

    /// Waits until everything queued so far is written and flushed.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_loop(writer: Box<dyn Write + Send>, receiver: mpsc::Receiver<Message>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, writer);
    let handle =
        |message: Message, out: &mut std::io::BufWriter<Box<dyn Write + Send>>| match message {
            Message::Line(line) => {
                if let Err(err) = out.write_all(&line) {
                    tracing::error!(%err, "cannot write the audit log");
                }
            }
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        };
    while let Ok(message) = receiver.recv() {
        handle(message, &mut out);
        while let Ok(more) = receiver.try_recv() {
            handle(more, &mut out);
        }
        if let Err(err) = out.flush() {
            tracing::error!(%err, "cannot flush the audit log");
        }
    }
    let _ = out.flush();
}
