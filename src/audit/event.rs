//! The audit record. It names the verified caller, the model and the outcome; it never holds a
//! token, a cookie or a credential.

use serde::Serialize;

use crate::authn::{Identity, IdentityKind};

#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub method: &'a str,
    /// The request path without its query (queries can carry secrets).
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub identity: Option<IdentityRecord<'a>>,
    pub model: Option<&'a ModelRef>,
    pub action: Option<&'a str>,
    pub decision: &'a Decision,
    pub usage: Option<&'a Usage>,
    pub upstream: Option<&'a str>,
    pub error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct IdentityRecord<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub groups: &'a [String],
    pub kind: IdentityKind,
    pub client_id: Option<&'a str>,
}

impl<'a> From<&'a Identity> for IdentityRecord<'a> {
    fn from(identity: &'a Identity) -> Self {
        IdentityRecord {
            issuer: &identity.issuer_url,
            subject: &identity.subject,
            email: identity.email.as_deref(),
            groups: &identity.groups,
            kind: identity.kind,
            client_id: identity.client_id.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ModelRef {
    pub id: Option<String>,
    pub revision: Option<String>,
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub policies: Vec<String>,
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Decision {
        Decision {
            allow: true,
            policies: Vec::new(),
            reason: reason.into(),
        }
    }

    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision {
            allow: false,
            policies: Vec::new(),
            reason: reason.into(),
        }
    }
}

/// Token usage reported by the upstream.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none() && self.completion_tokens.is_none()
    }
}

/// Formats a Unix time in milliseconds as RFC 3339 UTC (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339_millis(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let ms = (unix_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_795_954_380_000),
            "2026-11-29T12:13:00.000Z"
        );
    }
}
