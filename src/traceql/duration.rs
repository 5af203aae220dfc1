//! Duration literals of TraceQL: reading them (Prometheus-style `1d2h`, then Go-style `1.5s`,
//! `100us`, `2h30m`) and writing them back in Go's canonical spelling (`1.5s`, `2h30m0s`).
//! Values are signed nanoseconds. Owns nothing else; the lexer decides where a duration starts.

const NS: i128 = 1;
const US: i128 = 1_000;
const MS: i128 = 1_000_000;
const SEC: i128 = 1_000_000_000;
const MIN: i128 = 60 * SEC;
const HOUR: i128 = 60 * MIN;
const DAY: i128 = 24 * HOUR;

/// Parse a duration literal (no sign) into nanoseconds; `None` if it is not one.
pub fn parse_duration(s: &str) -> Option<i64> {
    parse_prometheus(s).or_else(|| parse_go(s))
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    s.split_at(end)
}

fn split_unit(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() || *c == '.')
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    s.split_at(end)
}

/// `[0-9]+y`, `w`, `d`, `h`, `m`, `s`, `ms`, each at most once and in that order.
fn parse_prometheus(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    const UNITS: [(&str, i128); 7] = [
        ("y", 365 * DAY),
        ("w", 7 * DAY),
        ("d", DAY),
        ("h", HOUR),
        ("m", MIN),
        ("s", SEC),
        ("ms", MS),
    ];
    let mut rest = s;
    let mut next_unit = 0;
    let mut total: i128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (unit, after) = split_unit(after);
        let idx = UNITS.iter().position(|(u, _)| *u == unit)?;
        if idx < next_unit {
            return None;
        }
        next_unit = idx + 1;
        let n: i128 = num.parse().ok()?;
        total = total.checked_add(n.checked_mul(UNITS[idx].1)?)?;
        if total > i64::MAX as i128 {
            return None;
        }
        rest = after;
    }
    Some(total as i64)
}

/// Go's `time.ParseDuration` without the sign: `([0-9]*(\.[0-9]*)?unit)+` or `0`.
fn parse_go(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
            return None;
        }
        let (unit, after) = split_unit(after);
        let scale = match unit {
            "ns" => NS,
            "us" | "\u{b5}s" | "\u{3bc}s" => US,
            "ms" => MS,
            "s" => SEC,
            "m" => MIN,
            "h" => HOUR,
            _ => return None,
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            if int_part.len() > 30 {
                return None;
            }
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(scale)?;
        // Fractions finer than a nanosecond are dropped, as Go does.
        let frac_digits: String = frac_part.chars().take(18).collect();
        if !frac_digits.is_empty() {
            let f: i128 = frac_digits.parse().ok()?;
            let denom = 10i128.pow(frac_digits.len() as u32);
            value = value.checked_add(f * scale / denom)?;
        }
        total = total.checked_add(value)?;
        if total > i64::MAX as i128 {
            return None;
        }
        rest = after;
    }
    Some(total as i64)
}

fn with_fraction(value: u64, digits: u32) -> String {
    let div = 10u64.pow(digits);
    let int = value / div;
    let rem = value % div;
    if rem == 0 {
        return int.to_string();
    }
    let frac = format!("{rem:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Go's `time.Duration.String()` spelling, which `parse_duration` reads back exactly.
pub fn format_duration(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let body = if u == 0 {
        "0s".to_string()
    } else if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}\u{b5}s", with_fraction(u, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", with_fraction(u, 6))
    } else {
        let secs = u / 1_000_000_000;
        let sub = u % 1_000_000_000;
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&with_fraction(s * 1_000_000_000 + sub, 9));
        out.push('s');
        out
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_styles() {
        assert_eq!(parse_duration("1s"), Some(1_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("100ms"), Some(100_000_000));
        assert_eq!(parse_duration("2h30m"), Some(9_000_000_000_000));
        assert_eq!(parse_duration("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_duration("1w"), Some(7 * 86_400_000_000_000));
        assert_eq!(parse_duration("10us"), Some(10_000));
        assert_eq!(parse_duration("10\u{b5}s"), Some(10_000));
        assert_eq!(parse_duration("5ns"), Some(5));
        assert_eq!(parse_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_duration("1m1"), None);
        assert_eq!(parse_duration("1x"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(100_000_000), "100ms");
        assert_eq!(format_duration(9_000_000_000_000), "2h30m0s");
        assert_eq!(format_duration(90_000_000_000), "1m30s");
        assert_eq!(format_duration(1_500), "1.5\u{b5}s");
        assert_eq!(format_duration(7), "7ns");
        assert_eq!(format_duration(-1_000_000_000), "-1s");
        for ns in [1, 999, 1_000, 1_234_567, 86_400_000_000_001, i64::MAX] {
            assert_eq!(parse_duration(&format_duration(ns)), Some(ns), "{ns}");
        }
    }
}
