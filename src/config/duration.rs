//! Durations are strings with a unit: `"0s"`, `"250ms"`, `"60s"`, `"5m"`, `"2h"`, `"1d"`.

use std::time::Duration;

/// Parses a duration string. A bare number is refused: the unit is what makes a config readable.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h, d), e.g. \"60s\""));
    }
    let value: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!("invalid duration {text:?}: missing unit (ms, s, m, h, d), e.g. \"{digits}s\""));
        }
        _ => {
            return Err(format!("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"));
        }
    };
    value.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

/// Renders a duration in the largest whole unit, the inverse of [`parse_duration`] for whole values.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 { "0s".to_string() } else { format!("{ms}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse_duration("60").expect_err("bare").contains("missing unit"));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn formats_the_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
