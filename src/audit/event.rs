//! The audit record. It names the verified caller, the model and the outcome; it never holds a
//! token, a cookie or a credential.

use serde::Serialize;

use crate::authn::IdentityKind;
use crate::classify::Action;
pub use crate::classify::ModelRef;

#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub ts: Timestamp,
    pub request_id: &'a str,
    pub route: Option<&'a str>,
    pub method: &'a str,
    /// The request path without its query (queries can carry secrets).
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The caller, as [`IdentityRecord`] serialized once per identity.
    pub identity: Option<&'a serde_json::value::RawValue>,
    pub model: Option<&'a ModelRef>,
    pub action: Option<Action>,
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

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Ids of the determining policies (shared with the cached verdict).
    pub policies: std::sync::Arc<[String]>,
    pub reason: std::sync::Arc<str>,
    /// Digest of the compiled policy set that decided (absent before authorization ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_set: Option<std::sync::Arc<str>>,
}

impl Decision {
    pub fn allow(reason: impl Into<std::sync::Arc<str>>) -> Decision {
        Decision { allow: true, policies: std::sync::Arc::new([]), reason: reason.into(), policy_set: None }
    }

    pub fn deny(reason: impl Into<std::sync::Arc<str>>) -> Decision {
        Decision { allow: false, policies: std::sync::Arc::new([]), reason: reason.into(), policy_set: None }
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

/// An RFC 3339 UTC timestamp with milliseconds (`2026-11-29T09:34:08.559Z`), formatted without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    /// Civil date from days since the epoch (Howard Hinnant's algorithm).
    pub fn from_unix_millis(unix_ms: u128) -> Timestamp {
        let secs = (unix_ms / 1000) as i64;
        let ms = (unix_ms % 1000) as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, value: i64| {
            let mut v = value;
            for i in (0..width).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, rem / 3600);
        put(14, 2, (rem % 3600) / 60);
        put(17, 2, rem % 60);
        put(20, 3, ms);
        Timestamp(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0000-00-00T00:00:00.000Z")
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(Timestamp::from_unix_millis(0).as_str(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_unix_millis(951_782_400_123).as_str(), "2000-02-29T00:00:00.123Z");
        assert_eq!(Timestamp::from_unix_millis(1_795_954_380_000).as_str(), "2026-11-29T12:13:00.000Z");
    }
}
