//! Byte sizes: a bare integer (`65536`) or a string with a unit (`"64KiB"`, `"16MiB"`, `"1GiB"`, `"10MB"`).

/// Parses a size with a unit. Binary units (KiB, MiB, GiB) are powers of 1024, decimal ones (KB, MB, GB) of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid size {text:?}: expected a number and a unit (B, KiB, MiB, GiB), e.g. \"16MiB\""));
    }
    let value: u64 = digits.parse().map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!("invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"));
        }
    };
    value.checked_mul(multiplier).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Renders a size in the largest binary unit that divides it, the inverse of [`parse_size`] for those values.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
    }

    #[test]
    fn refuses_unknown_units_and_overflow() {
        assert!(parse_size("16mb").expect_err("unit").contains("unknown unit"));
        assert!(parse_size("MiB").expect_err("digits").contains("expected a number"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("18446744073709551615GiB").expect_err("overflow").contains("too large"));
    }

    #[test]
    fn formats_in_the_largest_unit() {
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(65_536), "64KiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
