//! The fast half of decoding: a record's parts found without building JSON
//! trees. The `schema` half of a `{schema, payload}` record (about four
//! fifths of its bytes) is compared with the topic's last schema text, not
//! parsed; the payload is read by a borrowing parser that skips what
//! Sluice does not use, and a row with a schema goes straight from its JSON
//! text into typed values.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use super::schema::Encoding;
use super::{decimal, natural_value, temporal, typed_value};
use crate::model::{Column, Op, SourceOrder, Value};
use crate::source::envelope;

/// `{"schema":S,"payload":P}` as the JSON converter writes it, where S is
/// `known` byte for byte: (S, P), found without parsing S. `None` for any
/// other layout (the caller parses it the general way).
/// Trailing whitespace is allowed (the sources split only exact envelopes:
/// `source::envelope`, which owns the layout).
pub(super) fn split_known_schema<'t>(known: &str, text: &'t str) -> Option<(&'t str, &'t str)> {
    let payload = envelope::payload_in(known, text.trim_end())?;
    let schema = text.get(envelope::HEAD.len()..envelope::HEAD.len() + known.len())?;
    Some((schema, payload))
}

/// The parts of a Debezium payload Sluice reads, borrowed from its text.
#[derive(Deserialize)]
pub(super) struct PayloadParts<'a> {
    #[serde(borrow, default)]
    pub op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub source: Option<SourceParts<'a>>,
    #[serde(borrow, default)]
    pub ts_ms: Option<&'a RawValue>,
}

/// The `source` block's fields that place a change in its database's log.
#[derive(Deserialize, Default)]
pub(super) struct SourceParts<'a> {
    #[serde(borrow, default)]
    lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    gtid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    file: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pos: Option<&'a RawValue>,
    #[serde(borrow, default)]
    row: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub ts_ms: Option<&'a RawValue>,
}

/// Why a payload could not be read.
pub(super) fn payload_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => "payload is not a JSON object".into(),
        _ => format!("payload is not JSON: {e}"),
    }
}

/// What `op` says, `Err` naming an op Sluice does not know; `None` when
/// there is no string `op`.
pub(super) fn op_of(raw: Option<&RawValue>) -> Result<Option<Op>, String> {
    let Some(text) = raw.and_then(string_of) else {
        return Ok(None);
    };
    Ok(Some(match text.as_str() {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => Op::Read,
        "t" => Op::Truncate,
        other => return Err(format!("unknown Debezium op `{other}`")),
    }))
}

/// A JSON string's text (escapes resolved); `None` for any other value.
fn string_of(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match text[1..text.len() - 1].contains('\\') {
        false => Some(text[1..text.len() - 1].to_string()),
        true => serde_json::from_str(text).ok(),
    }
}

/// A JSON integer or an integer in a string (LSNs come as either).
fn unsigned_of(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    text.parse()
        .ok()
        .or_else(|| string_of(raw).and_then(|s| s.parse().ok()))
}

/// A JSON integer that fits i64.
pub(super) fn int_of(raw: Option<&RawValue>) -> Option<i64> {
    raw?.get().parse().ok()
}

fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

impl SourceParts<'_> {
    /// Where the change is in the source's log, for humans and the DLQ.
    pub(super) fn position(&self) -> Option<String> {
        if let Some(lsn) = present(self.lsn) {
            return Some(format!("lsn:{}", lsn.get()));
        }
        if let Some(gtid) = present(self.gtid).and_then(string_of) {
            return Some(format!("gtid:{gtid}"));
        }
        let file = present(self.file).and_then(string_of)?;
        let text = |r: Option<&RawValue>| r.map(|r| r.get().to_string()).unwrap_or_default();
        Some(format!(
            "binlog:{file}:{}:{}",
            text(self.pos),
            text(self.row)
        ))
    }

    /// The comparable position of a change (see `SourceOrder`): PostgreSQL's
    /// `lsn`; MySQL-family binlog file number, `pos` and `row`. A GTID alone
    /// orders transactions only, not the rows in them: no order then.
    pub(super) fn order(&self) -> Option<SourceOrder> {
        if let Some(lsn) = self.lsn.and_then(unsigned_of) {
            return Some(SourceOrder([lsn, 0, 0]));
        }
        let file = self.file.and_then(string_of)?;
        // `mysql-bin.000003`: the files of one server are numbered in order.
        let index: u64 = file.rsplit('.').next()?.parse().ok()?;
        let pos = self.pos.and_then(unsigned_of)?;
        let row = self.row.and_then(unsigned_of).unwrap_or(0);
        Some(SourceOrder([index, pos, row]))
    }
}

/// A row image read against its columns and their encodings: the values
/// in column order (a column the image lacks is null), or why a column's
/// value cannot be read. Malformed JSON fails the parse itself.
pub(super) struct RowSeed<'l> {
    pub columns: &'l [Column],
    pub encodings: &'l [Option<Encoding>],
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Result<Vec<Value>, String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Result<Vec<Value>, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row image (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![Value::Null; self.columns.len()];
        let mut failed: Option<(usize, String)> = None;
        // Debezium writes the fields in schema order: try the next one first.
        let mut next = 0;
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            let found = match self.columns.get(next) {
                Some(c) if c.name == name.as_ref() => Some(next),
                _ => self.columns.iter().position(|c| c.name == name.as_ref()),
            };
            let Some(i) = found else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            next = i + 1;
            let raw: &'de RawValue = map.next_value()?;
            if failed.as_ref().is_some_and(|(at, _)| *at < i) {
                continue;
            }
            match raw_value(self.encodings.get(i).and_then(Option::as_ref), raw.get()) {
                Ok(v) => out[i] = v,
                Err(e) => failed = Some((i, e)),
            }
        }
        Ok(match failed {
            Some((i, e)) => Err(format!("column `{}`: {e}", self.columns[i].name)),
            None => Ok(out),
        })
    }
}

/// Read a row image's text against its columns.
pub(super) fn row_values(
    columns: &[Column],
    encodings: &[Option<Encoding>],
    text: &str,
) -> Result<Vec<Value>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    RowSeed { columns, encodings }
        .deserialize(&mut de)
        .map_err(|e| format!("row image is not a JSON object: {e}"))?
}

/// An object key, borrowed unless it has escapes.
struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_string().into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// One value's JSON text by its encoding. The common shapes (plain
/// strings, integers) are read from the text directly; anything else goes
/// through the general conversion, so both read every value alike.
fn raw_value(enc: Option<&Encoding>, text: &str) -> Result<Value, String> {
    if text == "null" {
        return Ok(Value::Null);
    }
    let Some(enc) = enc else {
        let v: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
        return Ok(natural_value(&v));
    };
    let first = text.as_bytes().first().copied().unwrap_or(b' ');
    if first == b'"' && !text.contains('\\') {
        let s = &text[1..text.len() - 1];
        match enc {
            Encoding::Text => return Ok(Value::Text(s.to_string())),
            Encoding::Decimal { scale } => {
                return Ok(Value::Decimal(decimal::from_base64(s, *scale)?))
            }
            Encoding::ZonedTimestamp => return Ok(Value::Timestamp(temporal::parse_zoned(s)?)),
            _ => {}
        }
    } else if first == b'-' || first.is_ascii_digit() {
        match enc {
            Encoding::Int => {
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Value::Int(i));
                }
            }
            Encoding::LocalTimestamp(unit) => {
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Value::LocalTimestamp(unit.to_micros(i)?));
                }
            }
            Encoding::Time(unit) => {
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Value::Time(unit.to_micros(i)?));
                }
            }
            Encoding::Date => {
                if let Ok(i) = text.parse::<i32>() {
                    return Ok(Value::Date(i));
                }
            }
            _ => {}
        }
    } else if let (Encoding::Boolean, "true" | "false") = (enc, text) {
        return Ok(Value::Boolean(text == "true"));
    }
    let v: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
    typed_value(enc, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_schema_is_found_by_comparing_bytes() {
        let text = r#"{"schema":{"type":"struct"},"payload":{"op":"c"}}"#;
        assert_eq!(
            split_known_schema(r#"{"type":"struct"}"#, text),
            Some((r#"{"type":"struct"}"#, r#"{"op":"c"}"#))
        );
        // another schema, another layout: parsed the general way
        assert_eq!(split_known_schema(r#"{"type":"other"}"#, text), None);
        assert_eq!(
            split_known_schema(r#"{"type":"struct"}"#, r#"{"payload":{}}"#),
            None
        );
    }

    #[test]
    fn source_positions_read_like_the_general_path() {
        let pg: PayloadParts = serde_json::from_str(r#"{"source":{"lsn":123,"ts_ms":5}}"#).unwrap();
        let s = pg.source.unwrap();
        assert_eq!(s.order(), Some(SourceOrder([123, 0, 0])));
        assert_eq!(s.position().as_deref(), Some("lsn:123"));
        assert_eq!(int_of(s.ts_ms), Some(5));
        let my: PayloadParts = serde_json::from_str(
            r#"{"source":{"lsn":null,"gtid":null,"file":"mysql-bin.000003","pos":"77","row":2}}"#,
        )
        .unwrap();
        let s = my.source.unwrap();
        assert_eq!(s.order(), Some(SourceOrder([3, 77, 2])));
        assert_eq!(
            s.position().as_deref(),
            Some(r#"binlog:mysql-bin.000003:"77":2"#)
        );
    }
}
