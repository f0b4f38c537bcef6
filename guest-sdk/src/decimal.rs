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

/// `text * factor`, exactly, at `text`'s scale (`"12.50" * 3 = "37.50"`):
/// an error names a value that is not a decimal or a product beyond 38
/// digits.
pub fn multiply_decimal(text: &str, factor: i64) -> Result<String, String> {
    let canon = normalize_decimal(text)?;
    let (neg, body) = match canon.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, canon.as_str()),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let too_big = || format!("`{text}` * {factor} has more than 38 digits");
    let unscaled: i128 = format!("{int}{frac}").parse().map_err(|_| too_big())?;
    let product = unscaled
        .checked_mul(i128::from(factor))
        .filter(|p| p.unsigned_abs() < 10u128.pow(38))
        .ok_or_else(too_big)?;
    let negative = (product < 0) != neg && product != 0;
    let scale = frac.len();
    let mut digits = product.unsigned_abs().to_string();
    if digits.len() <= scale {
        digits = format!("{}{digits}", "0".repeat(scale + 1 - digits.len()));
    }
    let (i, f) = digits.split_at(digits.len() - scale);
    let mut out = String::with_capacity(digits.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(i);
    if scale > 0 {
        out.push('.');
        out.push_str(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{multiply_decimal, normalize_decimal};

    #[test]
    fn products_are_exact_at_the_decimals_scale() {
        assert_eq!(multiply_decimal("12.50", 3).unwrap(), "37.50");
        assert_eq!(multiply_decimal("224.71", 6).unwrap(), "1348.26");
        assert_eq!(multiply_decimal("-0.05", 3).unwrap(), "-0.15");
        assert_eq!(multiply_decimal("0.05", -3).unwrap(), "-0.15");
        assert_eq!(multiply_decimal("-0.05", -3).unwrap(), "0.15");
        assert_eq!(multiply_decimal("7", 0).unwrap(), "0");
        assert_eq!(multiply_decimal("-1.10", 0).unwrap(), "0.00");
        // 0.1 * 3 is 0.3, not 0.30000000000000004
        assert_eq!(multiply_decimal("0.1", 3).unwrap(), "0.3");
        assert!(multiply_decimal(&"9".repeat(37), 100).is_err());
        assert!(multiply_decimal("1e3", 2).is_err());
    }

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
