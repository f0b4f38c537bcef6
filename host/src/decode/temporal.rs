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
    match DateTime::from_timestamp_micros(us) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

/// µs → `2025-03-22T17:41:47.580457`.
pub fn format_local(us: i64) -> String {
    match DateTime::from_timestamp_micros(us) {
        Some(dt) => dt.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => us.to_string(),
    }
}

/// Days → `2023-12-11`.
pub fn format_date(days: i32) -> String {
    match EPOCH_DATE.checked_add_signed(chrono::Duration::days(days as i64)) {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => days.to_string(),
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
}
