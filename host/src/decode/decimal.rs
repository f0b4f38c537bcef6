//! Exact decimals: Connect's base64 two's-complement bytes, JSON numbers and
//! decimal text all become canonical decimal text. Nothing passes through f64.

use base64::Engine as _;
use num_bigint::BigInt;

/// Canonical text of `unscaled × 10^-scale`, keeping the scale (`1234`, 2 → `12.34`).
pub fn from_unscaled(unscaled: &BigInt, scale: u32) -> String {
    let neg = unscaled.sign() == num_bigint::Sign::Minus;
    with_point(neg, &unscaled.magnitude().to_string(), scale)
}

/// `from_unscaled` for a value that fits in an `i128` (nearly every
/// decimal a database holds: 38 digits), without a big integer.
pub fn from_unscaled_i128(unscaled: i128, scale: u32) -> String {
    with_point(unscaled < 0, &unscaled.unsigned_abs().to_string(), scale)
}

/// The text of a decimal given its sign, unscaled digits and scale.
fn with_point(neg: bool, digits: &str, scale: u32) -> String {
    let scale = scale as usize;
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if neg {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(digits);
    }
    out
}

/// Decode Connect's `Decimal` bytes (base64 of a big-endian two's complement
/// unscaled integer) with the scale from the schema.
pub fn from_base64(text: &str, scale: u32) -> Result<String, String> {
    // Up to 16 bytes (24 base64 characters): an i128 on the stack, no
    // big integer (anything else, errors included, takes the general way).
    if text.len() <= 24 {
        let mut buf = [0u8; 18];
        if let Ok(n @ 1..=16) =
            base64::engine::general_purpose::STANDARD.decode_slice(text, &mut buf)
        {
            let fill = if buf[0] >= 0x80 { 0xff } else { 0 };
            let mut full = [fill; 16];
            full[16 - n..].copy_from_slice(&buf[..n]);
            return Ok(from_unscaled_i128(i128::from_be_bytes(full), scale));
        }
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("`{text}` is not base64 decimal bytes: {e}"))?;
    if bytes.is_empty() {
        return Err("empty decimal bytes".into());
    }
    Ok(from_unscaled(&BigInt::from_signed_bytes_be(&bytes), scale))
}

/// Canonicalise a decimal written as text or as a JSON number (which may use an
/// exponent, e.g. `1.5E+3`). Returns `None` if `text` is not a decimal number.
pub fn canonical(text: &str) -> Option<String> {
    let t = text.trim();
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (neg, body) = match mantissa.as_bytes().first()? {
        b'-' => (true, &mantissa[1..]),
        b'+' => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if body.ends_with('.') {
        return None;
    }
    // unscaled digits and scale, then apply the exponent
    let mut digits = format!("{int}{frac}");
    let mut scale = frac.len() as i64 - exp;
    if scale < 0 {
        if -scale > 4096 {
            return None;
        }
        digits.extend(std::iter::repeat_n('0', (-scale) as usize));
        scale = 0;
    }
    if scale > 4096 {
        return None;
    }
    let unscaled: BigInt = digits.parse().ok()?;
    let unscaled = if neg { -unscaled } else { unscaled };
    Some(from_unscaled(&unscaled, scale as u32))
}

/// Is `text` shaped like base64 (what a precise decimal looks like without a
/// schema)? Used to explain, never to decode.
pub fn looks_like_base64(text: &str) -> bool {
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && text.trim_end_matches('=').bytes().all(|b| b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_two_complement() {
        // real values from the fixture: orders.amount "YMc=" is 247.75
        assert_eq!(from_base64("YMc=", 2).unwrap(), "247.75");
        assert_eq!(from_base64("AA==", 2).unwrap(), "0.00");
        assert_eq!(from_base64("/w==", 2).unwrap(), "-0.01");
        assert_eq!(from_base64("gA==", 0).unwrap(), "-128");
        assert_eq!(from_base64("AIA=", 0).unwrap(), "128");
        assert_eq!(from_base64("Bw==", 3).unwrap(), "0.007");
        assert!(from_base64("not base64!", 2).is_err());
    }

    /// The i128 path gives what the big-integer one gives, for every byte
    /// length up to 16 and at its edges (17 bytes take the big one).
    #[test]
    fn base64_decimals_decode_alike_in_and_out_of_i128() {
        use base64::engine::general_purpose::STANDARD;
        let general =
            |bytes: &[u8], scale: u32| from_unscaled(&BigInt::from_signed_bytes_be(bytes), scale);
        let mut values: Vec<i128> = vec![0, 1, -1, 127, 128, -128, -129, i128::MAX, i128::MIN];
        for shift in 0..127 {
            let p = 1i128 << shift;
            values.extend([p, p - 1, -p, -p + 1, p + 1]);
        }
        values.extend((0..39).map(|e| 10i128.pow(e)));
        for v in values {
            let be = v.to_be_bytes();
            // as Connect writes it: the fewest bytes that keep the sign
            let skip = (0..15)
                .take_while(|&i| {
                    (be[i] == 0 && be[i + 1] < 0x80) || (be[i] == 0xff && be[i + 1] >= 0x80)
                })
                .count();
            for bytes in [&be[skip..], &be[..]] {
                for scale in [0, 2, 7, 38, 40] {
                    let text = STANDARD.encode(bytes);
                    assert_eq!(
                        from_base64(&text, scale).unwrap(),
                        general(bytes, scale),
                        "{v} at {scale}"
                    );
                }
            }
        }
        let wide = [0x7fu8; 17];
        let text = STANDARD.encode(wide);
        assert_eq!(from_base64(&text, 3).unwrap(), general(&wide, 3));
        assert!(from_base64("", 2).is_err());
    }

    #[test]
    fn canonical_numbers() {
        assert_eq!(canonical("168.40").as_deref(), Some("168.40"));
        assert_eq!(canonical("-0.5").as_deref(), Some("-0.5"));
        assert_eq!(canonical("1.5E+3").as_deref(), Some("1500"));
        assert_eq!(canonical("15e-3").as_deref(), Some("0.015"));
        assert_eq!(canonical("007").as_deref(), Some("7"));
        assert_eq!(
            canonical("12345678901234567890.123456789").as_deref(),
            Some("12345678901234567890.123456789")
        );
        for bad in ["", "abc", "1.", "--1", "1e", "YMc="] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64_shape() {
        assert!(looks_like_base64("YMc="));
        assert!(looks_like_base64("U0o="));
        assert!(!looks_like_base64("168.40"));
        assert!(!looks_like_base64("NEW"));
        assert!(!looks_like_base64("a=b="));
    }
}
