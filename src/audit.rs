//! The audit trail: one JSON line per request, written when its response ends (or the client goes
//! away), by a dedicated writer thread so that request tasks never wait on the disk.

pub mod event;
pub mod sink;

pub use event::{AuditEvent, Decision, ModelRef, Usage};
pub use sink::AuditSink;
