//! Durations as people write them in flags and environment variables:
//! `90` (seconds), `90s`, `15m`, `24h`, `7d`.

use std::time::Duration;

/// `90`, `90s`, `15m`, `1h`, `7d`: a positive whole number of seconds,
/// minutes, hours or days (a bare number is seconds). For clap's
/// `value_parser`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: use seconds, or a number with s, m, h or d"
            ))
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_seconds))
        .filter(|&seconds| seconds > 0)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_a_number_with_a_unit() {
        for (text, seconds) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("90m", 5400),
            ("1h", 3600),
            ("24h", 86_400),
            ("3600s", 3600),
            ("7d", 604_800),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for text in [
            "",
            "0",
            "0h",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
