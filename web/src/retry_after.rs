//! An HTTP `Retry-After` read as `js/retry-after.js` reads it for the npm package: delay
//! seconds (digits only) or an HTTP date. Host-compiled, so its rules are tested by
//! `cargo test`; the browser's `Date.parse` reads the date, as in the npm package.

/// Most ms a wait comes out as (JavaScript's `Number.MAX_SAFE_INTEGER`, as in the npm
/// package): seconds too many to count, bounded by the caller (the core waits at most an
/// hour).
const MAX_MS: u64 = (1 << 53) - 1;

/// The wait `value` asks for, in ms from `now_ms`: delay seconds or an HTTP date (one in
/// the past: 0); `None` when empty or neither. Every HTTP date form (RFC 9110 5.6.7) starts
/// with a day name, which keeps out what `parse_date` (`Date.parse`, NaN when it cannot
/// read it) would also read as a date (`-5`, `1.5`).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by cache.rs
pub(crate) fn retry_after_ms(
    value: &str,
    now_ms: f64,
    parse_date: impl FnOnce(&str) -> f64,
) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is more than MAX_MS too.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(secs.saturating_mul(1000).min(MAX_MS));
    }
    if !v
        .get(..3)
        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return None;
    }
    let at = parse_date(v);
    if at.is_nan() {
        return None;
    }
    Some((at - now_ms).clamp(0.0, MAX_MS as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_700_000_000_000.0;

    /// A stand-in for `Date.parse` that knows two dates.
    fn parse(v: &str) -> f64 {
        match v {
            "Wed, 21 Oct 2015 07:28:00 GMT" => NOW + 120_000.0,
            "Tue, 20 Oct 2015 07:28:00 GMT" => NOW - 5_000.0,
            _ => f64::NAN,
        }
    }

    #[test]
    fn seconds_and_dates_as_the_npm_package_reads_them() {
        let wait = |v: &str| retry_after_ms(v, NOW, parse);
        assert_eq!(wait("120"), Some(120_000));
        assert_eq!(wait(" 0 "), Some(0));
        assert_eq!(wait("99999999999999999999999"), Some(MAX_MS));
        assert_eq!(wait("Wed, 21 Oct 2015 07:28:00 GMT"), Some(120_000));
        assert_eq!(wait("Tue, 20 Oct 2015 07:28:00 GMT"), Some(0), "past: now");
        for none in [
            "",
            "  ",
            "-5",
            "1.5",
            "1e3",
            "soon",
            "Wed, 99 Foo",
            "12 Oct 2015",
        ] {
            assert_eq!(wait(none), None, "{none:?}");
        }
    }
}
