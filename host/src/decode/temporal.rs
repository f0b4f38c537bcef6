//! Debezium's temporal encodings to the host's microsecond model, and back to
//! ISO text for sinks. Sub-microsecond precision is refused, never truncated.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// The unit of an integer temporal value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl TimeUnit {
    /// Convert to microseconds; nanoseconds must be whole microseconds.
    pub fn to_micros(self, v: i64) -> Result<i64, String> {
        match self {
            TimeUnit::Ms => v
                .checked_mul(1000)
                .ok_or_else(|| format!("{v} ms is out of range")),
            TimeUnit::Us => Ok(v),
            TimeUnit::Ns if v % 1000 == 0 => Ok(v / 1000),
            TimeUnit::Ns => Err(format!(
                "{v} ns has sub-microsecond precision, which the host cannot keep"
            )),
        }
    }
}

const EPOCH_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("epoch"),
};

/// Parse an ISO-8601 instant with offset (Debezium `ZonedTimestamp`) to µs UTC.
pub fn parse_zoned(text: &str) -> Result<i64, String> {
    let dt = DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("`{text}` is not an ISO-8601 timestamp with zone: {e}"))?;
    if dt.nanosecond() % 1000 != 0 {
        return Err(format!("`{text}` has sub-microsecond precision"));
    }
    Ok(dt.timestamp_micros())
}

/// Parse an ISO-8601 local date-time (`2024-01-02T03:04:05.123456`) to µs.
pub fn parse_local(text: &str) -> Result<i64, String> {
    let dt = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .map_err(|e| format!("`{text}` is not an ISO-8601 date-time: {e}"))?;
    if dt.nanosecond() % 1000 != 0 {
        return Err(format!("`{text}` has sub-microsecond precision"));
    }
    Ok(dt.and_utc().timestamp_micros())
}

/// Parse an ISO date to days since the epoch.
pub fn parse_date(text: &str) -> Result<i32, String> {
    let d = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| format!("`{text}` is not an ISO date: {e}"))?;
    i32::try_from((d - EPOCH_DATE).num_days()).map_err(|_| format!("`{text}` is out of range"))
}

/// Parse an ISO time of day to µs since midnight.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = NaiveTime::parse_from_str(text.trim_end_matches('Z'), "%H:%M:%S%.f")
        .map_err(|e| format!("`{text}` is not an ISO time: {e}"))?;
    if t.nanosecond() % 1000 != 0 {
        return Err(format!("`{text}` has sub-microsecond precision"));
    }
    Ok(t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64)
}

/// µs UTC → `2024-02-11T01:30:00.000000Z`.
pub fn format_timestamp(us: i64) -> String {
    let mut out = String::with_capacity(27);
    if write_iso(&mut out, us) {
        out.push('Z');
        return out;
    }
    match DateTime::from_timestamp_micros(us) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

/// µs → `2025-03-22T17:41:47.580457`.
pub fn format_local(us: i64) -> String {
    let mut out = String::with_capacity(26);
    if write_iso(&mut out, us) {
        return out;
    }
    match DateTime::from_timestamp_micros(us) {
        Some(dt) => dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => us.to_string(),
    }
}

/// Days → `2023-12-11`.
pub fn format_date(days: i32) -> String {
    if let Some(ymd) = civil(days as i64) {
        let mut out = String::with_capacity(10);
        push_date(&mut out, ymd);
        return out;
    }
    match EPOCH_DATE.checked_add_signed(chrono::Duration::days(days as i64)) {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => days.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff` of µs since the epoch, written by hand
/// (sinks bind every timestamp as text; chrono's formatter took a twentieth
/// of an aggregation's commit). `false` for years outside 0000–9999, which
/// take chrono's signed, wider form.
fn write_iso(out: &mut String, us: i64) -> bool {
    let days = us.div_euclid(86_400_000_000);
    let Some(ymd) = civil(days) else {
        return false;
    };
    let in_day = us.rem_euclid(86_400_000_000);
    let secs = in_day / 1_000_000;
    push_date(out, ymd);
    out.push('T');
    push_digits(out, (secs / 3600) as u32, 2);
    out.push(':');
    push_digits(out, ((secs / 60) % 60) as u32, 2);
    out.push(':');
    push_digits(out, (secs % 60) as u32, 2);
    out.push('.');
    push_digits(out, (in_day % 1_000_000) as u32, 6);
    true
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`), for years 0000–9999 only.
fn civil(days: i64) -> Option<(u32, u32, u32)> {
    // 0000-03-01 .. 9999-12-31 (earlier days of year 0 take the general path).
    if !(-719_468..=2_932_896).contains(&days) {
        return None;
    }
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (0..=9999)
        .contains(&y)
        .then_some((y as u32, m as u32, d as u32))
}

fn push_date(out: &mut String, (y, m, d): (u32, u32, u32)) {
    push_digits(out, y, 4);
    out.push('-');
    push_digits(out, m, 2);
    out.push('-');
    push_digits(out, d, 2);
}

/// `v` in exactly `width` decimal digits (zero-padded; `v` fits).
fn push_digits(out: &mut String, v: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (v / div % 10) as u8));
        div /= 10;
    }
}

/// µs since midnight → `17:41:47.580457`.
pub fn format_time(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        micros
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let us = parse_zoned("2024-02-11T01:30:00.000000Z").unwrap();
        assert_eq!(format_timestamp(us), "2024-02-11T01:30:00.000000Z");
        assert_eq!(
            parse_zoned("2024-02-11T02:30:00+01:00").unwrap(),
            us,
            "offsets are instants"
        );
        assert_eq!(format_local(1742665307580457), "2025-03-22T17:41:47.580457");
        assert_eq!(
            parse_local("2025-03-22T17:41:47.580457").unwrap(),
            1742665307580457
        );
        assert_eq!(format_date(19702), "2023-12-11");
        assert_eq!(parse_date("2023-12-11").unwrap(), 19702);
        assert_eq!(format_time(63_707_580_457), "17:41:47.580457");
        assert_eq!(parse_time("17:41:47.580457").unwrap(), 63_707_580_457);
        assert!(parse_time("17:41:47.580457001Z").is_err(), "not truncated");
    }

    #[test]
    fn refuses_lost_precision() {
        assert!(TimeUnit::Ns.to_micros(1_001).is_err());
        assert_eq!(TimeUnit::Ns.to_micros(2_000).unwrap(), 2);
        assert!(parse_zoned("2024-02-11T01:30:00.000000001Z").is_err());
    }

    #[test]
    fn hand_written_formats_equal_chrono_s() {
        let chrono_local = |us: i64| match DateTime::from_timestamp_micros(us) {
            Some(dt) => dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            None => us.to_string(),
        };
        let first: i64 = -62_167_219_200_000_000; // 0000-01-01
        let last: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999
        let step = 86_399_999_999 * 37 + 123_457;
        let mut us = first - 400 * 86_400_000_000;
        while us <= last + 400 * 86_400_000_000 {
            assert_eq!(format_local(us), chrono_local(us), "{us}");
            assert_eq!(format_timestamp(us), chrono_local(us) + "Z", "{us}");
            let days = us.div_euclid(86_400_000_000) as i32;
            let want = (EPOCH_DATE + chrono::Duration::days(days as i64))
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(format_date(days), want, "{days}");
            us += step;
        }
        for us in [first, first - 1, last, last + 1, i64::MIN, i64::MAX, 0, -1] {
            assert_eq!(format_local(us), chrono_local(us), "{us}");
        }
    }
}
