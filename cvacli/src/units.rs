//! The one parser of the sizes and durations the commands take: `4k`, `1m`, `2g`
//! (powers of 1024, fio's meaning) and `500ms`, `30s`, `2m`, `1h`.

use std::time::Duration;

/// Parses a byte count: digits, then an optional k/m/g/t (KiB.. TiB), case-insensitive,
/// an optional trailing `b`/`ib` accepted.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, suffix) = split(text)?;
    let shift = match suffix
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown size unit {suffix:?} (k, m, g, t)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// Parses a duration: digits, then ms, s (the default), m or h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, suffix) = split(text)?;
    let millis = match suffix {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown time unit {suffix:?} (ms, s, m, h)"
            ));
        }
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// The leading decimal number and the rest.
fn split(text: &str) -> Result<(u64, &str), String> {
    let text = text.trim();
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..end]
        .parse::<u64>()
        .map_err(|e| format!("{text:?}: not a number ({e})"))?;
    Ok((number, &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("4x").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("k").unwrap_err().contains("not a number"));
        assert!(parse_bytes("").is_err());
        assert!(
            parse_bytes("99999999999t")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("3d").is_err());
    }
}
