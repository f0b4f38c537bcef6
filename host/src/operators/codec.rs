//! Binary encoding of state: values, keys and accumulators as the sink's
//! `sluice_state` rows hold them. Deterministic (equal values, equal bytes),
//! so encoded values serve as keys; versioned by a leading byte so a later
//! layout can still read what an earlier one wrote.

use crate::model::{SourceOrder, Value};

/// Layout version of every encoded state value.
pub const VERSION: u8 = 1;

/// State keys longer than this are stored as their SHA-256 (MySQL indexes
/// at most 1024 bytes of the key): state whose keys are read back (whole
/// tables, expiry) refuses longer ones.
pub const MAX_KEY: usize = 1000;

/// Why stored state could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("state is corrupt or from an unknown layout: {0}")]
pub struct CorruptState(pub &'static str);

/// Appends encoded items.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// A source position, if known (re-deliveries are recognised by it).
    pub fn order(&mut self, order: Option<SourceOrder>) {
        match order {
            Some(SourceOrder([a, b, c])) => {
                self.u8(1);
                self.i64(a as i64);
                self.i64(b as i64);
                self.i64(c as i64);
            }
            None => self.u8(0),
        }
    }

    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.u8(0),
            Value::Boolean(b) => {
                self.u8(1);
                self.u8(*b as u8)
            }
            Value::Int(i) => {
                self.u8(2);
                self.i64(*i)
            }
            Value::Float(f) => {
                self.u8(3);
                self.buf.extend_from_slice(&f.to_bits().to_le_bytes())
            }
            Value::Decimal(s) => {
                self.u8(4);
                self.str(s)
            }
            Value::Text(s) => {
                self.u8(5);
                self.str(s)
            }
            Value::Bytes(b) => {
                self.u8(6);
                self.bytes(b)
            }
            Value::Timestamp(t) => {
                self.u8(7);
                self.i64(*t)
            }
            Value::LocalTimestamp(t) => {
                self.u8(8);
                self.i64(*t)
            }
            Value::Date(d) => {
                self.u8(9);
                self.i64(*d as i64)
            }
            Value::Time(t) => {
                self.u8(10);
                self.i64(*t)
            }
            Value::Json(s) => {
                self.u8(11);
                self.str(s)
            }
        }
    }

    pub fn values(&mut self, vs: &[Value]) {
        self.u32(vs.len() as u32);
        for v in vs {
            self.value(v);
        }
    }
}

/// Reads what a [`Writer`] wrote.
pub struct Reader<'a> {
    pub buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptState> {
        if self.buf.len() < n {
            return Err(CorruptState("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, CorruptState> {
        Ok(self.take(1)?[0])
    }

    pub fn i64(&mut self) -> Result<i64, CorruptState> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(
            b.try_into().map_err(|_| CorruptState("i64"))?,
        ))
    }

    pub fn u32(&mut self) -> Result<u32, CorruptState> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| CorruptState("u32"))?,
        ))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], CorruptState> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, CorruptState> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| CorruptState("utf-8"))
    }

    pub fn order(&mut self) -> Result<Option<SourceOrder>, CorruptState> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(SourceOrder([
                self.i64()? as u64,
                self.i64()? as u64,
                self.i64()? as u64,
            ])),
        })
    }

    pub fn value(&mut self) -> Result<Value, CorruptState> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Boolean(self.u8()? != 0),
            2 => Value::Int(self.i64()?),
            3 => Value::Float(f64::from_bits(self.i64()? as u64)),
            4 => Value::Decimal(self.string()?),
            5 => Value::Text(self.string()?),
            6 => Value::Bytes(self.bytes()?.to_vec()),
            7 => Value::Timestamp(self.i64()?),
            8 => Value::LocalTimestamp(self.i64()?),
            9 => Value::Date(
                i32::try_from(self.i64()?).map_err(|_| CorruptState("date out of range"))?,
            ),
            10 => Value::Time(self.i64()?),
            11 => Value::Json(self.string()?),
            _ => return Err(CorruptState("unknown value tag")),
        })
    }

    pub fn values(&mut self) -> Result<Vec<Value>, CorruptState> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.value()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Encode a list of values as a key.
pub fn key(values: &[Value]) -> Vec<u8> {
    let mut w = Writer::default();
    w.values(values);
    w.buf
}

/// A source row's identity: its topic and primary key (the name operators
/// keep a row's state under).
pub fn row_identity(topic: &str, key: &[Value]) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(topic);
    w.values(key);
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_as_written() {
        let vs = vec![
            Value::Null,
            Value::Boolean(true),
            Value::Int(-7),
            Value::Float(1.5),
            Value::Decimal("-12.50".into()),
            Value::Text("é".into()),
            Value::Bytes(vec![0, 255]),
            Value::Timestamp(1),
            Value::LocalTimestamp(-2),
            Value::Date(19000),
            Value::Time(3),
            Value::Json("{}".into()),
        ];
        let bytes = key(&vs);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.values().unwrap(), vs);
        assert!(r.is_empty());
        assert!(Reader::new(&bytes[..bytes.len() - 1]).values().is_err());
    }
}
