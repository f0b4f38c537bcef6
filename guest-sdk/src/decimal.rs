//! Exact decimal text handling: plugins must never route money through `f64`.

/// Check that `text` is a plain decimal number and return it in canonical form
/// (optional `-`, digits, optional `.` and digits; no exponent, no `+`, no
/// leading zeros beyond one). The scale (digits after the point) is kept.
pub fn normalize_decimal(text: &str) -> Result<String, String> {
    let t = text.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(int) || (int.is_empty() && frac.is_some_and(digits)))
        || frac.is_some_and(|f| !digits(f))
    {
        return Err(format!("`{text}` is not a decimal number"));
    }
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let is_zero = int == "0" && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
    let mut out = String::with_capacity(t.len() + 1);
    if neg && !is_zero {
        out.push('-');
    }
    out.push_str(int);
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::normalize_decimal;

    #[test]
    fn canonical_forms() {
        assert_eq!(normalize_decimal("168.40").unwrap(), "168.40");
        assert_eq!(normalize_decimal(" -0012.5").unwrap(), "-12.5");
        assert_eq!(normalize_decimal("+7").unwrap(), "7");
        assert_eq!(normalize_decimal(".5").unwrap(), "0.5");
        assert_eq!(normalize_decimal("-0.00").unwrap(), "0.00");
    }

    #[test]
    fn rejects_non_decimals() {
        for bad in ["", "-", "1e5", "1.2.3", "abc", "YMc=", "1.", "NaN"] {
            assert!(normalize_decimal(bad).is_err(), "{bad} accepted");
        }
    }
}
