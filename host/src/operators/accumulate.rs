//! Accumulators by class (as Materialize splits them): invertible ones
//! (count, sum, avg) take signed deltas and keep no per-value state; min and
//! max keep a multiset (value → count). Sums are exact: integers in i128,
//! decimals as big integers with a scale, floats as big integers of 2^-1074
//! units (every f64 is one exactly), so retracting what was added restores
//! the sum bit for bit — no float drift.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use num_bigint::BigInt;
use num_traits::{Signed, ToPrimitive};

use super::codec::{CorruptState, Reader, Writer};
use super::spec::{AggregateFn, MeasureSpec};
use super::CustomCalls;
use crate::decode::decimal;
use crate::model::Value;

/// An exact running sum.
#[derive(Clone, Debug, PartialEq)]
pub enum Sum {
    /// Nothing (non-null) added yet.
    Empty,
    Int(i128),
    /// Unscaled value and scale.
    Decimal(Unscaled, u32),
    /// Units of 2^-1074.
    Float(BigInt),
}

/// A decimal sum's unscaled value: an `i128` while it fits (38 digits:
/// every sum of money), a big integer only beyond, so the common sum is
/// added, merged, copied and stored without a heap allocation. Canonical —
/// `Big` never holds a value `Small` can — so the derived equality is the
/// numbers' equality.
#[derive(Clone, Debug, PartialEq)]
pub enum Unscaled {
    Small(i128),
    /// Boxed: the rare case keeps the accumulator small.
    Big(Box<BigInt>),
}

impl Unscaled {
    fn from_big(b: BigInt) -> Unscaled {
        match b.to_i128() {
            Some(s) => Unscaled::Small(s),
            None => Unscaled::Big(Box::new(b)),
        }
    }

    fn to_big(&self) -> BigInt {
        match self {
            Unscaled::Small(s) => BigInt::from(*s),
            Unscaled::Big(b) => (**b).clone(),
        }
    }

    /// `self` += `v` × 10^(`to` − `from`) × `weight`, in i128 where every
    /// step fits.
    fn add_scaled(&mut self, v: &Unscaled, from: u32, to: u32, weight: i64) {
        if let (Unscaled::Small(s), Unscaled::Small(v)) = (&*self, v) {
            if let Some(sum) = rescale_i128(*v, from, to)
                .and_then(|v| v.checked_mul(weight as i128))
                .and_then(|v| s.checked_add(v))
            {
                *self = Unscaled::Small(sum);
                return;
            }
        }
        *self = Unscaled::from_big(self.to_big() + rescale(&v.to_big(), from, to) * weight);
    }

    /// `self` × 10^(`to` − `from`).
    fn rescaled(&self, from: u32, to: u32) -> Unscaled {
        if let Unscaled::Small(s) = self {
            if let Some(r) = rescale_i128(*s, from, to) {
                return Unscaled::Small(r);
            }
        }
        Unscaled::from_big(rescale(&self.to_big(), from, to))
    }

    /// The minimal little-endian two's complement bytes, as
    /// `BigInt::to_signed_bytes_le` writes them (the stored layout).
    fn write(&self, w: &mut Writer) {
        match self {
            Unscaled::Small(s) => {
                let bytes = s.to_le_bytes();
                let mut n = 16;
                // drop a top byte that only repeats the sign of the one below
                while n > 1 {
                    let (top, below) = (bytes[n - 1], bytes[n - 2]);
                    if (top == 0 && below < 0x80) || (top == 0xff && below >= 0x80) {
                        n -= 1;
                    } else {
                        break;
                    }
                }
                w.bytes(&bytes[..n]);
            }
            Unscaled::Big(b) => w.bytes(&b.to_signed_bytes_le()),
        }
    }

    fn read(bytes: &[u8]) -> Unscaled {
        match bytes.len() {
            1..=16 => {
                let fill = if bytes[bytes.len() - 1] >= 0x80 {
                    0xff
                } else {
                    0
                };
                let mut full = [fill; 16];
                full[..bytes.len()].copy_from_slice(bytes);
                Unscaled::Small(i128::from_le_bytes(full))
            }
            _ => Unscaled::from_big(BigInt::from_signed_bytes_le(bytes)),
        }
    }

    fn text(&self, scale: u32) -> String {
        match self {
            Unscaled::Small(s) => decimal::from_unscaled_i128(*s, scale),
            Unscaled::Big(b) => decimal::from_unscaled(b, scale),
        }
    }
}

/// `text` as (unscaled, scale).
fn parse_decimal(text: &str) -> Result<(BigInt, u32), String> {
    if let Some((unscaled, scale)) = plain_decimal(text) {
        return Ok((BigInt::from(unscaled), scale));
    }
    let canonical =
        decimal::canonical(text).ok_or_else(|| format!("`{text}` is not a decimal number"))?;
    let (neg, body) = match canonical.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, canonical.as_str()),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits: BigInt = format!("{int}{frac}")
        .parse()
        .map_err(|_| format!("`{text}` is not a decimal number"))?;
    Ok((if neg { -digits } else { digits }, frac.len() as u32))
}

/// `text` as (unscaled, scale), without a big integer for a plain one.
fn parse_unscaled(text: &str) -> Result<(Unscaled, u32), String> {
    match plain_decimal(text) {
        Some((u, scale)) => Ok((Unscaled::Small(u), scale)),
        None => parse_decimal(text).map(|(u, scale)| (Unscaled::from_big(u), scale)),
    }
}

/// The common shape, `-?digits[.digits]` with at most 38 digits, parsed
/// without the text round trip of `decimal::canonical` (sums of money run
/// this once per change and window); `None` for anything else.
fn plain_decimal(text: &str) -> Option<(i128, u32)> {
    let (neg, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || (body.len() > int.len() && frac.is_empty()) || int.len() + frac.len() > 38
    {
        return None;
    }
    let mut unscaled: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        if !b.is_ascii_digit() {
            return None;
        }
        unscaled = unscaled * 10 + (b - b'0') as i128;
    }
    Some((if neg { -unscaled } else { unscaled }, frac.len() as u32))
}

fn rescale(v: &BigInt, from: u32, to: u32) -> BigInt {
    v * BigInt::from(10u32).pow(to - from)
}

/// `rescale` in i128, `None` where the result does not fit.
fn rescale_i128(v: i128, from: u32, to: u32) -> Option<i128> {
    v.checked_mul(10i128.checked_pow(to - from)?)
}

/// An f64 in units of 2^-1074, exactly.
fn float_units(f: f64) -> Result<BigInt, String> {
    if !f.is_finite() {
        return Err(format!("{f} cannot be summed"));
    }
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1u64 << 52) - 1);
    let units = if exp == 0 {
        BigInt::from(frac)
    } else {
        BigInt::from(frac | (1u64 << 52)) << (exp - 1) as usize
    };
    Ok(if f.is_sign_negative() { -units } else { units })
}

fn units_to_f64(u: &BigInt) -> f64 {
    let bits = u.bits();
    if bits <= 1000 {
        let f = u.to_f64().unwrap_or(f64::NAN);
        return f * 2f64.powi(-1074);
    }
    let shift = bits - 64;
    let top = (u >> shift as usize).to_f64().unwrap_or(f64::NAN);
    top * 2f64.powi(shift as i32 - 1074)
}

impl Sum {
    /// Add `v` `weight` times.
    fn add(&mut self, v: &Value, weight: i64) -> Result<(), String> {
        let w = weight as i128;
        match (&mut *self, v) {
            (_, Value::Null) => {}
            (Sum::Empty, Value::Int(i)) => *self = Sum::Int(*i as i128 * w),
            (Sum::Int(s), Value::Int(i)) => {
                *s = s
                    .checked_add(*i as i128 * w)
                    .ok_or("integer sum overflows 128 bits")?
            }
            (Sum::Empty, Value::Decimal(d)) => {
                let (u, scale) = parse_unscaled(d)?;
                let mut s = Unscaled::Small(0);
                s.add_scaled(&u, scale, scale, weight);
                *self = Sum::Decimal(s, scale);
            }
            (Sum::Decimal(s, scale), Value::Decimal(d)) => {
                // A plain decimal parses to an i128 and adds in i128 (no
                // temporary big integer) while everything fits.
                let (u, sc) = parse_unscaled(d)?;
                if sc > *scale {
                    *s = s.rescaled(*scale, sc);
                    *scale = sc;
                }
                s.add_scaled(&u, sc, *scale, weight);
            }
            (Sum::Decimal(s, scale), Value::Int(i)) => {
                s.add_scaled(&Unscaled::Small(*i as i128), 0, *scale, weight)
            }
            (Sum::Float(s), Value::Int(i)) => *s += float_units(*i as f64)? * weight,
            (Sum::Int(s), Value::Decimal(d)) => {
                let (u, sc) = parse_unscaled(d)?;
                let mut acc = Unscaled::Small(*s).rescaled(0, sc);
                acc.add_scaled(&u, sc, sc, weight);
                *self = Sum::Decimal(acc, sc);
            }
            (Sum::Empty, Value::Float(f)) => *self = Sum::Float(float_units(*f)? * weight),
            (Sum::Float(s), Value::Float(f)) => *s += float_units(*f)? * weight,
            (Sum::Int(s), Value::Float(f)) => {
                *self = Sum::Float(float_units(*s as f64)? + float_units(*f)? * weight)
            }
            (_, other) => {
                return Err(format!(
                    "cannot sum {} values{}",
                    other.natural_type().as_str(),
                    match self {
                        Sum::Empty => String::new(),
                        Sum::Int(_) => " with integers".into(),
                        Sum::Decimal(..) => " with decimals".into(),
                        Sum::Float(_) => " with floats".into(),
                    }
                ))
            }
        }
        Ok(())
    }

    /// Add another sum of the same column (a pane's to a window's), exact
    /// for every kind: a float sum's units are added as they are, not
    /// rounded to an f64 first.
    fn merge(&mut self, other: &Sum) -> Result<(), String> {
        match (&mut *self, other) {
            (_, Sum::Empty) => {}
            (Sum::Empty, o) => *self = o.clone(),
            (Sum::Int(s), Sum::Int(o)) => {
                *s = s.checked_add(*o).ok_or("integer sum overflows 128 bits")?
            }
            (Sum::Float(s), Sum::Float(o)) => *s += o,
            // as `add` mixes them: the integer as an f64
            (Sum::Float(s), Sum::Int(o)) => *s += float_units(*o as f64)?,
            (Sum::Int(s), Sum::Float(o)) => *self = Sum::Float(float_units(*s as f64)? + o),
            (Sum::Decimal(s, scale), Sum::Decimal(o, sc)) => {
                if *sc > *scale {
                    *s = s.rescaled(*scale, *sc);
                    *scale = *sc;
                }
                s.add_scaled(o, *sc, *scale, 1);
            }
            // mixed kinds: as adding the other's value
            (_, o) => self.add(&o.value(), 1)?,
        }
        Ok(())
    }

    fn value(&self) -> Value {
        match self {
            Sum::Empty => Value::Null,
            Sum::Int(i) => match i64::try_from(*i) {
                Ok(v) => Value::Int(v),
                Err(_) => Value::Decimal(i.to_string()),
            },
            Sum::Decimal(u, scale) => Value::Decimal(u.text(*scale)),
            Sum::Float(u) => Value::Float(units_to_f64(u)),
        }
    }

    /// sum / n, or null when nothing was added.
    fn average(&self, n: i64) -> Value {
        if n == 0 {
            return Value::Null;
        }
        match self {
            Sum::Empty => Value::Null,
            Sum::Int(i) => Value::Float(*i as f64 / n as f64),
            Sum::Float(u) => Value::Float(units_to_f64(u) / n as f64),
            Sum::Decimal(u, scale) => {
                // Six more digits than the inputs, rounded half away from zero.
                let out_scale = scale + 6;
                let num = rescale(&u.to_big(), *scale, out_scale);
                let n = BigInt::from(n);
                let half = if num.is_negative() { -&n } else { n.clone() };
                let q = (num * 2 + half) / (n * 2);
                Value::Decimal(decimal::from_unscaled(&q, out_scale))
            }
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Sum::Empty => w.u8(0),
            Sum::Int(i) => {
                w.u8(1);
                w.buf.extend_from_slice(&i.to_le_bytes());
            }
            Sum::Decimal(u, scale) => {
                w.u8(2);
                u.write(w);
                w.u32(*scale);
            }
            Sum::Float(u) => {
                w.u8(3);
                w.bytes(&u.to_signed_bytes_le());
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Sum, CorruptState> {
        Ok(match r.u8()? {
            0 => Sum::Empty,
            1 => {
                let lo = r.i64()? as u64 as u128;
                let hi = r.i64()? as u64 as u128;
                Sum::Int((lo | (hi << 64)) as i128)
            }
            2 => {
                let u = Unscaled::read(r.bytes()?);
                Sum::Decimal(u, r.u32()?)
            }
            3 => Sum::Float(BigInt::from_signed_bytes_le(r.bytes()?)),
            _ => return Err(CorruptState("sum tag")),
        })
    }
}

/// A value ordered for min/max: numbers by value (decimals exactly), text
/// by bytes, times by time; different kinds by kind.
#[derive(Clone, Debug)]
pub struct Ordered(pub Value);

impl Ordered {
    fn rank(&self) -> u8 {
        match &self.0 {
            Value::Null => 0,
            Value::Boolean(_) => 1,
            Value::Int(_) | Value::Decimal(_) | Value::Float(_) => 2,
            Value::Text(_) => 3,
            Value::Bytes(_) => 4,
            Value::Timestamp(_) => 5,
            Value::LocalTimestamp(_) => 6,
            Value::Date(_) => 7,
            Value::Time(_) => 8,
            Value::Json(_) => 9,
        }
    }
}

fn cmp_numbers(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Float(x), Value::Int(y)) => x.total_cmp(&(*y as f64)),
        (Value::Int(x), Value::Float(y)) => (*x as f64).total_cmp(y),
        _ => {
            // Plain decimals (and integers) compared in i128 when both fit
            // at the larger scale: no big integers for the min/max of money.
            let plain = |v: &Value| match v {
                Value::Int(i) => Some((*i as i128, 0)),
                Value::Decimal(d) => plain_decimal(d),
                _ => None,
            };
            if let (Some((x, sx)), Some((y, sy))) = (plain(a), plain(b)) {
                let s = sx.max(sy);
                if let (Some(x), Some(y)) = (rescale_i128(x, sx, s), rescale_i128(y, sy, s)) {
                    return x.cmp(&y);
                }
            }
            let exact = |v: &Value| match v {
                Value::Int(i) => Some((BigInt::from(*i), 0)),
                Value::Decimal(d) => parse_decimal(d).ok(),
                _ => None,
            };
            match (exact(a), exact(b)) {
                (Some((x, sx)), Some((y, sy))) => {
                    let s = sx.max(sy);
                    rescale(&x, sx, s).cmp(&rescale(&y, sy, s))
                }
                // A float beside a decimal: compare as floats.
                _ => {
                    let f = |v: &Value| match v {
                        Value::Float(f) => *f,
                        Value::Decimal(d) => d.parse().unwrap_or(f64::NAN),
                        Value::Int(i) => *i as f64,
                        _ => f64::NAN,
                    };
                    f(a).total_cmp(&f(b))
                }
            }
        }
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| match (&self.0, &other.0) {
                (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
                (Value::Text(a), Value::Text(b)) | (Value::Json(a), Value::Json(b)) => a.cmp(b),
                (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
                (Value::Timestamp(a), Value::Timestamp(b))
                | (Value::LocalTimestamp(a), Value::LocalTimestamp(b))
                | (Value::Time(a), Value::Time(b)) => a.cmp(b),
                (Value::Date(a), Value::Date(b)) => a.cmp(b),
                (a, b) if self.rank() == 2 => cmp_numbers(a, b),
                _ => Ordering::Equal,
            })
    }
}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ordered {}

/// One measure's state.
#[derive(Clone, Debug, PartialEq)]
pub enum Acc {
    /// `count-rows`: the group's row count is the answer.
    Rows,
    /// Non-null values counted.
    Count(i64),
    /// Sum and how many non-null values it holds (avg divides by it).
    Sum(Sum, i64),
    /// The multiset of non-null values (min and max).
    Multiset(BTreeMap<Ordered, i64>),
    /// A custom aggregate: the plugin's state bytes per source partition
    /// (one writer each, whatever the order of partitions), merged by the
    /// plugin when the value is read.
    Custom(BTreeMap<Vec<u8>, Vec<u8>>),
}

impl Acc {
    pub fn new(f: AggregateFn) -> Acc {
        match f {
            AggregateFn::CountRows => Acc::Rows,
            AggregateFn::Count => Acc::Count(0),
            AggregateFn::Sum | AggregateFn::Avg => Acc::Sum(Sum::Empty, 0),
            AggregateFn::Min | AggregateFn::Max => Acc::Multiset(BTreeMap::new()),
            AggregateFn::Custom => Acc::Custom(BTreeMap::new()),
        }
    }

    /// Whether applying `v` `weight` times would be refused, and why.
    fn check(&self, v: &Value, weight: i64) -> Result<(), String> {
        match self {
            // The plugin checks its own (in `aggregate-apply`).
            Acc::Rows | Acc::Custom(_) => Ok(()),
            Acc::Count(n) => {
                if *v != Value::Null && n + weight < 0 {
                    Err("a retraction matches no counted value".into())
                } else {
                    Ok(())
                }
            }
            Acc::Sum(s, n) => {
                if *v == Value::Null {
                    return Ok(());
                }
                if n + weight < 0 {
                    return Err("a retraction matches no summed value".into());
                }
                s.clone().add(v, weight)
            }
            Acc::Multiset(m) => {
                if *v == Value::Null || weight > 0 {
                    return Ok(());
                }
                let have = m.get(&Ordered(v.clone())).copied().unwrap_or(0);
                if have + weight < 0 {
                    Err(format!(
                        "a retraction of {v:?} matches no value in the group"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Apply `v` `weight` times; `check` said it can.
    fn apply(&mut self, v: &Value, weight: i64) {
        if *v == Value::Null {
            return;
        }
        match self {
            // Custom states change by `set_partial` (the plugin computes them).
            Acc::Rows | Acc::Custom(_) => {}
            Acc::Count(n) => *n += weight,
            Acc::Sum(s, n) => {
                *n += weight;
                if s.add(v, weight).is_err() {
                    debug_assert!(false, "applied after a failed check");
                }
                if *n == 0 {
                    *s = Sum::Empty;
                }
            }
            Acc::Multiset(m) => {
                let k = Ordered(v.clone());
                let n = m.entry(k.clone()).or_insert(0);
                *n += weight;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
    }

    fn merge(&mut self, other: &Acc) -> Result<(), String> {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a, na), Acc::Sum(b, nb)) if *nb != 0 => {
                a.merge(b)?;
                *na += nb;
            }
            (Acc::Multiset(a), Acc::Multiset(b)) => {
                for (k, n) in b {
                    *a.entry(k.clone()).or_insert(0) += n;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(
        &self,
        f: AggregateFn,
        rows: i64,
        measure: u32,
        calls: &mut dyn CustomCalls,
    ) -> Result<Value, String> {
        Ok(match (self, f) {
            (Acc::Custom(parts), _) => {
                let parts: Vec<Vec<u8>> = parts.values().cloned().collect();
                let state = match parts.len() {
                    0 => return Ok(Value::Null),
                    1 => parts.into_iter().next().unwrap_or_default(),
                    _ => calls.merge(measure, &parts)?,
                };
                calls.finish(measure, &state)?
            }
            (Acc::Rows, _) => Value::Int(rows),
            (Acc::Count(n), _) => Value::Int(*n),
            (Acc::Sum(s, _), AggregateFn::Sum) => s.value(),
            (Acc::Sum(s, n), _) => s.average(*n),
            (Acc::Multiset(m), AggregateFn::Min) => {
                m.keys().next().map_or(Value::Null, |k| k.0.clone())
            }
            (Acc::Multiset(m), _) => m.keys().next_back().map_or(Value::Null, |k| k.0.clone()),
        })
    }

    fn write(&self, w: &mut Writer) {
        match self {
            Acc::Rows => w.u8(0),
            Acc::Count(n) => {
                w.u8(1);
                w.i64(*n)
            }
            Acc::Sum(s, n) => {
                w.u8(2);
                s.write(w);
                w.i64(*n)
            }
            Acc::Multiset(m) => {
                w.u8(3);
                w.u32(m.len() as u32);
                for (k, n) in m {
                    w.value(&k.0);
                    w.i64(*n);
                }
            }
            Acc::Custom(parts) => {
                w.u8(4);
                w.u32(parts.len() as u32);
                for (p, state) in parts {
                    w.bytes(p);
                    w.bytes(state);
                }
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Acc, CorruptState> {
        Ok(match r.u8()? {
            0 => Acc::Rows,
            1 => Acc::Count(r.i64()?),
            2 => {
                let s = Sum::read(r)?;
                Acc::Sum(s, r.i64()?)
            }
            3 => {
                let n = r.u32()?;
                let mut m = BTreeMap::new();
                for _ in 0..n {
                    let v = r.value()?;
                    m.insert(Ordered(v), r.i64()?);
                }
                Acc::Multiset(m)
            }
            4 => {
                let n = r.u32()?;
                let mut parts = BTreeMap::new();
                for _ in 0..n {
                    let p = r.bytes()?.to_vec();
                    parts.insert(p, r.bytes()?.to_vec());
                }
                Acc::Custom(parts)
            }
            _ => return Err(CorruptState("accumulator tag")),
        })
    }
}

/// A group's state: its row count and one accumulator per measure.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupAcc {
    pub rows: i64,
    pub measures: Vec<Acc>,
}

impl GroupAcc {
    pub fn new(measures: &[MeasureSpec]) -> GroupAcc {
        GroupAcc {
            rows: 0,
            measures: measures.iter().map(|m| Acc::new(m.function)).collect(),
        }
    }

    /// Whether a row with `args` can be added (`weight` > 0) or retracted.
    pub fn check(&self, args: &[Value], weight: i64) -> Result<(), String> {
        if self.rows + weight < 0 {
            return Err(
                "a retraction matches no row of the group (lost input or corrupt state)".into(),
            );
        }
        for (acc, v) in self.measures.iter().zip(args) {
            acc.check(v, weight)?;
        }
        Ok(())
    }

    pub fn apply(&mut self, args: &[Value], weight: i64) {
        self.rows += weight;
        for (acc, v) in self.measures.iter_mut().zip(args) {
            acc.apply(v, weight);
        }
    }

    /// Add another group's rows (a pane's to a window's, a time's to a
    /// session's). `Err`: their sums cannot be added (a float sum and a
    /// decimal one); the group is then unusable.
    pub fn merge(&mut self, other: &GroupAcc) -> Result<(), String> {
        self.rows += other.rows;
        for (a, b) in self.measures.iter_mut().zip(&other.measures) {
            a.merge(b)?;
        }
        Ok(())
    }

    /// The measure values, in declaration order; custom ones through the
    /// plugin (`Err`: it failed to merge or finish).
    pub fn finish(
        &self,
        measures: &[MeasureSpec],
        calls: &mut dyn CustomCalls,
    ) -> Result<Vec<Value>, String> {
        self.measures
            .iter()
            .zip(measures)
            .enumerate()
            .map(|(i, (a, m))| a.finish(m.function, self.rows, i as u32, calls))
            .collect()
    }

    /// A custom measure's state for one source partition.
    pub fn partial(&self, measure: usize, partition: &[u8]) -> Option<&[u8]> {
        match self.measures.get(measure) {
            Some(Acc::Custom(parts)) => parts.get(partition).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Set a custom measure's state for one source partition.
    pub fn set_partial(&mut self, measure: usize, partition: Vec<u8>, state: Vec<u8>) {
        if let Some(Acc::Custom(parts)) = self.measures.get_mut(measure) {
            parts.insert(partition, state);
        }
    }

    pub fn write(&self, w: &mut Writer) {
        w.i64(self.rows);
        w.u32(self.measures.len() as u32);
        for m in &self.measures {
            m.write(w);
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<GroupAcc, CorruptState> {
        let rows = r.i64()?;
        let n = r.u32()?;
        let measures = (0..n).map(|_| Acc::read(r)).collect::<Result<_, _>>()?;
        Ok(GroupAcc { rows, measures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path parses exactly what the canonical path parses, and
    /// leaves everything else to it.
    #[test]
    fn plain_decimals_parse_as_canonical_ones() {
        let slow = |t: &str| {
            let c = decimal::canonical(t)?;
            let (neg, body) = match c.strip_prefix('-') {
                Some(b) => (true, b.to_string()),
                None => (false, c.clone()),
            };
            let (int, frac) = body.split_once('.').unwrap_or((&body, ""));
            let digits: BigInt = format!("{int}{frac}").parse().ok()?;
            Some((if neg { -digits } else { digits }, frac.len() as u32))
        };
        for t in [
            "0",
            "12",
            "-12",
            "12.50",
            "-0.001",
            "0.000",
            "99999999999999999999999999999999999999",
            "-1234567890123456789.0123456789012345678",
        ] {
            let fast = plain_decimal(t).map(|(u, s)| (BigInt::from(u), s));
            assert!(fast.is_some(), "{t}");
            assert_eq!(fast, slow(t), "{t}");
        }
        for t in [
            "",
            "-",
            ".",
            "1.",
            "-.5",
            ".5",
            "+1",
            " 1",
            "1e3",
            "1.5E+3",
            "abc",
            "1.2.3",
            "999999999999999999999999999999999999999",
        ] {
            assert_eq!(plain_decimal(t), None, "{t}");
            assert_eq!(parse_decimal(t).ok(), slow(t), "{t}");
        }
    }

    fn measures(fs: &[AggregateFn]) -> Vec<MeasureSpec> {
        fs.iter()
            .map(|&function| MeasureSpec {
                name: format!("{function:?}"),
                function,
                column: None,
                output_type: None,
            })
            .collect()
    }

    #[test]
    fn decimal_sums_are_exact_and_retractions_restore_them() {
        let ms = measures(&[AggregateFn::CountRows, AggregateFn::Sum, AggregateFn::Avg]);
        let mut g = GroupAcc::new(&ms);
        for d in ["0.10", "0.20", "1234567890123456789012345.5"] {
            let v = Value::Decimal(d.into());
            g.check(&[Value::Null, v.clone(), v.clone()], 1).unwrap();
            g.apply(&[Value::Null, v.clone(), v], 1);
        }
        let out = g.finish(&ms, &mut super::super::NoCustom).unwrap();
        assert_eq!(out[0], Value::Int(3));
        assert_eq!(
            out[1],
            Value::Decimal("1234567890123456789012345.80".into())
        );
        let big = Value::Decimal("1234567890123456789012345.5".into());
        g.apply(&[Value::Null, big.clone(), big], -1);
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap()[1],
            Value::Decimal("0.30".into())
        );
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap()[2],
            Value::Decimal("0.15000000".into())
        );
    }

    #[test]
    fn float_sums_do_not_drift_under_retraction() {
        let ms = measures(&[AggregateFn::Sum]);
        let mut g = GroupAcc::new(&ms);
        g.apply(&[Value::Float(0.1)], 1);
        for _ in 0..1000 {
            g.apply(&[Value::Float(1e16)], 1);
            g.apply(&[Value::Float(0.3)], 1);
            g.apply(&[Value::Float(1e16)], -1);
            g.apply(&[Value::Float(0.3)], -1);
        }
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap()[0],
            Value::Float(0.1)
        );
    }

    /// Merging groups (panes into a window) adds their exact sums: the
    /// same value one group holding all the rows gives, not the merge of
    /// rounded ones (1 + 2^-53 rounds to 1 as an f64).
    #[test]
    fn merged_float_sums_are_the_sum_of_all_the_rows() {
        let ms = measures(&[AggregateFn::Sum]);
        let tiny = Value::Float(2f64.powi(-53));
        let (mut a, mut b, mut all) = (GroupAcc::new(&ms), GroupAcc::new(&ms), GroupAcc::new(&ms));
        for (in_a, v) in [
            (true, Value::Float(1.0)),
            (true, tiny.clone()),
            (false, tiny),
        ] {
            let g = if in_a { &mut a } else { &mut b };
            g.apply(std::slice::from_ref(&v), 1);
            all.apply(&[v], 1);
        }
        let mut merged = GroupAcc::new(&ms);
        merged.merge(&a).unwrap();
        merged.merge(&b).unwrap();
        let sum = |g: &GroupAcc| g.finish(&ms, &mut super::super::NoCustom).unwrap()[0].clone();
        assert_eq!(sum(&all), Value::Float(1.0 + 2f64.powi(-52)));
        assert_eq!(sum(&merged), sum(&all));
    }

    #[test]
    fn min_and_max_follow_deletes_and_nulls_do_not_count() {
        let ms = measures(&[AggregateFn::Min, AggregateFn::Max, AggregateFn::Count]);
        let mut g = GroupAcc::new(&ms);
        let row = |d: &str| {
            let v = Value::Decimal(d.into());
            [v.clone(), v.clone(), v]
        };
        for d in ["9.5", "10.25", "-3"] {
            g.apply(&row(d), 1);
        }
        g.apply(&[Value::Null, Value::Null, Value::Null], 1);
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap(),
            vec![
                Value::Decimal("-3".into()),
                Value::Decimal("10.25".into()),
                Value::Int(3)
            ]
        );
        g.apply(&row("-3"), -1);
        g.apply(&row("10.25"), -1);
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap()[..2],
            [Value::Decimal("9.5".into()), Value::Decimal("9.5".into())]
        );
        assert!(
            g.check(&row("77"), -1).is_err(),
            "retracting a value never added"
        );
        g.apply(&row("9.5"), -1);
        assert_eq!(
            g.finish(&ms, &mut super::super::NoCustom).unwrap(),
            vec![Value::Null, Value::Null, Value::Int(0)]
        );
    }

    #[test]
    fn a_group_never_counts_below_zero() {
        let ms = measures(&[AggregateFn::CountRows]);
        let g = GroupAcc::new(&ms);
        let e = g.check(&[Value::Null], -1).unwrap_err();
        assert!(e.contains("matches no row"), "{e}");
    }

    #[test]
    fn state_reads_back_as_written() {
        let ms = measures(&[
            AggregateFn::Sum,
            AggregateFn::Max,
            AggregateFn::Sum,
            AggregateFn::Sum,
        ]);
        let mut g = GroupAcc::new(&ms);
        g.apply(
            &[
                Value::Decimal("1.5".into()),
                Value::Text("b".into()),
                Value::Int(i64::MAX),
                Value::Float(-2.5),
            ],
            2,
        );
        let mut w = Writer::default();
        g.write(&mut w);
        assert_eq!(GroupAcc::read(&mut Reader::new(&w.buf)).unwrap(), g);
    }

    /// Decimals compare and sum in i128 where they fit and as big
    /// integers where not, with the same results: every pair of a set of
    /// values across signs, scales and the i128 edge is ordered as their
    /// exact values are, and summing them in turn (each added, some taken
    /// away again) gives the exact sum.
    #[test]
    fn decimals_compare_and_sum_exactly_in_and_out_of_i128() {
        let texts = [
            "0",
            "-0.00",
            "1.5",
            "1.50",
            "-1.5",
            "2.25",
            "0.001",
            "-0.0001",
            "12345678901234567890.12345678",
            "99999999999999999999999999999999999999",
            "-99999999999999999999999999999999999999",
            "9999999999999999999999999999999999999.9",
            "0.00000000000000000000000000000000000001",
        ];
        let exact = |t: &str| {
            let (neg, body) = match t.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, t),
            };
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            let digits: BigInt = format!("{int}{frac}").parse().unwrap();
            (if neg { -digits } else { digits }, frac.len() as u32)
        };
        let at = |(u, s): (BigInt, u32), to: u32| u * BigInt::from(10u32).pow(to - s);
        for a in texts {
            for b in texts {
                let (ea, eb) = (exact(a), exact(b));
                let s = ea.1.max(eb.1);
                let want = at(ea, s).cmp(&at(eb, s));
                let got = Ordered(Value::Decimal(a.into())).cmp(&Ordered(Value::Decimal(b.into())));
                assert_eq!(got, want, "{a} against {b}");
            }
            for i in [0i64, 7, -3, i64::MAX] {
                let (e, s) = exact(a);
                let want = at((e, s), s).cmp(&at((BigInt::from(i), 0), s));
                let got = Ordered(Value::Decimal(a.into())).cmp(&Ordered(Value::Int(i)));
                assert_eq!(got, want, "{a} against {i}");
            }
        }
        let scale = texts.iter().map(|t| exact(t).1).max().unwrap();
        let mut sum = Sum::Empty;
        let mut want = BigInt::from(0);
        for (i, t) in texts.iter().enumerate() {
            let weight = [1, 3, -1][i % 3];
            sum.add(&Value::Decimal((*t).into()), weight).unwrap();
            want += at(exact(t), scale) * weight;
        }
        match sum {
            Sum::Decimal(u, s) => assert_eq!(at((u.to_big(), s), scale), want),
            other => panic!("a decimal sum, not {other:?}"),
        }
    }

    /// A decimal sum is an i128 while it fits and a big integer beyond,
    /// always canonical (so equal sums compare equal), and stored in the
    /// layout big integers were stored in (state written before reads back).
    #[test]
    fn decimal_sums_cross_the_i128_edge_and_keep_their_stored_layout() {
        let max = Value::Decimal(i128::MAX.to_string());
        let mut sum = Sum::Empty;
        sum.add(&max, 1).unwrap();
        assert_eq!(sum, Sum::Decimal(Unscaled::Small(i128::MAX), 0));
        sum.add(&Value::Decimal("1".into()), 1).unwrap();
        let over: BigInt = BigInt::from(i128::MAX) + 1;
        assert_eq!(sum, Sum::Decimal(Unscaled::Big(Box::new(over.clone())), 0));
        assert_eq!(sum.value(), Value::Decimal(over.to_string()));
        // back under the edge: small again, equal to a sum that never left it
        sum.add(&Value::Int(1), -1).unwrap();
        assert_eq!(sum, Sum::Decimal(Unscaled::Small(i128::MAX), 0));
        let mut merged = Sum::Empty;
        merged
            .merge(&Sum::Decimal(Unscaled::Small(i128::MAX), 0))
            .unwrap();
        merged
            .merge(&Sum::Decimal(Unscaled::Small(i128::MAX), 0))
            .unwrap();
        let twice: BigInt = BigInt::from(i128::MAX) * 2;
        assert_eq!(
            merged,
            Sum::Decimal(Unscaled::Big(Box::new(twice.clone())), 0)
        );
        // a finer scale that no longer fits rescales as a big integer
        let mut fine = Sum::Decimal(Unscaled::Small(i128::MAX / 5), 0);
        fine.add(&Value::Decimal("0.5".into()), 1).unwrap();
        let want: BigInt = BigInt::from(i128::MAX / 5) * 10 + 5;
        assert_eq!(fine, Sum::Decimal(Unscaled::Big(Box::new(want)), 1));

        let mut values: Vec<BigInt> = [
            0i128,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            255,
            256,
            i128::MAX,
            i128::MIN,
        ]
        .into_iter()
        .map(BigInt::from)
        .collect();
        for shift in 0..130 {
            let p: BigInt = BigInt::from(1) << shift;
            values.extend([p.clone(), &p - 1, -p.clone(), -&p + 1]);
        }
        for v in values {
            let u = Unscaled::from_big(v.clone());
            assert_eq!(
                matches!(u, Unscaled::Small(_)),
                v.to_i128().is_some(),
                "{v}"
            );
            let mut w = Writer::default();
            u.write(&mut w);
            let mut want = Writer::default();
            want.bytes(&v.to_signed_bytes_le());
            assert_eq!(w.buf, want.buf, "{v}");
            let back = Unscaled::read(Reader::new(&w.buf).bytes().unwrap());
            assert_eq!(back, u, "{v}");
            assert_eq!(u.text(3), decimal::from_unscaled(&v, 3), "{v}");
        }
    }
}
