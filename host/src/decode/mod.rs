//! Debezium change records (JSON converter output) to typed [`ChangeEvent`]s.
//!
//! Accepts the three envelope shapes seen in the wild: `{schema, payload}`, a
//! bare payload, and `{payload}` alone. With a schema, every column is typed
//! from it (each distinct schema text is parsed once and cached). Without one,
//! JSON values keep their natural type unless the pipeline declares the column
//! (`[columns]` hints); what cannot be known is refused, never guessed.

pub mod decimal;
mod payload;
pub mod schema;
pub mod temporal;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;

use crate::config::{
    ColumnHint, ColumnHints, DecimalEncoding, DecimalHandling, HintType, TableKeys,
};
use crate::model::{ChangeEvent, Column, ColumnType, Learned, Op, RawRecord, TableDesc, Value};
use payload::{op_of, payload_error, split_known_schema, PayloadParts};
use schema::{Encoding, RowSchema};
use temporal::TimeUnit;

/// Why a record could not be decoded; the message goes to the DLQ.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// A decoded record.
#[derive(Debug)]
pub enum Decoded {
    Change(ChangeEvent),
    /// A null value after a delete (Kafka log compaction marker); nothing to apply.
    Tombstone,
}

#[derive(Deserialize)]
struct Wrapper<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Decodes records, caching parsed schemas and interning table descriptors.
pub struct Decoder {
    hints: ColumnHints,
    keys: TableKeys,
    /// Whether an undeclared schemaless string may be a base64 decimal.
    base64_decimals_possible: bool,
    schemas: HashMap<String, Arc<RowSchema>>,
    /// The schema text last seen per topic, checked before hashing into `schemas`.
    last_schema: HashMap<Arc<str>, (Arc<str>, Arc<RowSchema>)>,
    key_schemas: HashMap<String, Arc<Vec<String>>>,
    /// The key schema text last seen per topic and its names: a key that
    /// carries it again is known by comparing bytes, without parsing it.
    last_key: HashMap<Arc<str>, (String, Arc<Vec<String>>)>,
    tables: HashMap<TableKey, Arc<TableDesc>>,
    /// What the last record of each topic decoded with a schema resolved
    /// to; the next one with the same row schema and key names reuses it
    /// instead of building its layout and interning its table again.
    last_table: HashMap<Arc<str>, Arc<TopicLayout>>,
    /// Key column names last seen per topic, for records whose key is unreadable.
    known_keys: HashMap<Arc<str>, Arc<Vec<String>>>,
    /// Schemaless columns proven to hold text: they carried a string that is
    /// not base64, which a precise (base64) decimal column never does.
    proven_text: HashMap<Arc<str>, HashSet<String>>,
    /// Facts learned since the last `take_learned`, to be committed with the batch.
    learned: Vec<Learned>,
}

#[derive(Hash, PartialEq, Eq)]
struct TableKey {
    topic: Arc<str>,
    columns: Vec<Column>,
    key: Vec<String>,
}

/// A topic's resolved row: for records whose row schema and key names are
/// the same `Arc`s as the previous record's.
struct TopicLayout {
    schema: Arc<RowSchema>,
    key_names: Arc<Vec<String>>,
    layout: Arc<RowLayout>,
    key_idx: Vec<u32>,
    desc: Arc<TableDesc>,
}

/// Column names, types and converters of one record's row.
#[derive(Clone)]
struct RowLayout {
    columns: Vec<Column>,
    encodings: Vec<Option<Encoding>>,
}

impl Decoder {
    pub fn new(hints: ColumnHints) -> Self {
        Decoder {
            hints,
            keys: TableKeys::default(),
            base64_decimals_possible: true,
            schemas: HashMap::new(),
            last_schema: HashMap::new(),
            key_schemas: HashMap::new(),
            last_key: HashMap::new(),
            tables: HashMap::new(),
            last_table: HashMap::new(),
            known_keys: HashMap::new(),
            proven_text: HashMap::new(),
            learned: Vec::new(),
        }
    }

    /// Restore what earlier runs learned (from the sink's checkpoint).
    pub fn restore(&mut self, facts: Vec<Learned>) {
        for fact in facts {
            match fact {
                Learned::TextColumn { topic, column } => {
                    self.proven_text
                        .entry(topic.into())
                        .or_default()
                        .insert(column);
                }
                Learned::Key { topic, columns } => {
                    self.known_keys.insert(topic.into(), Arc::new(columns));
                }
            }
        }
    }

    /// Facts learned since the last call; commit them with the batch's offsets.
    pub fn take_learned(&mut self) -> Vec<Learned> {
        std::mem::take(&mut self.learned)
    }

    /// Use configured primary keys for records whose Kafka key is missing or unreadable.
    pub fn with_keys(mut self, keys: TableKeys) -> Self {
        self.keys = keys;
        self
    }

    /// What the connector's `decimal.handling.mode` is (default `precise`).
    pub fn with_decimal_handling(mut self, mode: DecimalHandling) -> Self {
        self.base64_decimals_possible = mode == DecimalHandling::Precise;
        self
    }

    /// Decode one record.
    pub fn decode(&mut self, rec: &RawRecord) -> Result<Decoded, DecodeError> {
        if rec.value.is_none() {
            return Ok(Decoded::Tombstone);
        }
        let err = |m: String| DecodeError(m);
        // The source split the envelope (`source::envelope`): the schema is
        // known, the value is the payload. A payload that does not parse
        // alone is decoded whole, as it was read.
        let split = match (&rec.schema, rec.value.as_deref()) {
            (Some(schema), Some(payload)) if payload != "null" => {
                match serde_json::from_str::<PayloadParts<'_>>(payload) {
                    Ok(parts) => {
                        Some((parts, self.row_schema(&rec.id.topic, schema, Some(schema))))
                    }
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let whole = match &split {
            Some(_) => None,
            None => rec.value_text(),
        };
        let text = whole.as_deref().unwrap_or_default();
        // The common case first: the topic's schema again, compared as bytes.
        let known = match split {
            Some((parts, rs)) => Some((parts, rs.map_err(err)?)),
            None => self
                .last_schema
                .get(&*rec.id.topic)
                .and_then(|(known, rs)| Some((split_known_schema(known, text)?, rs.clone())))
                .and_then(|((_, payload), rs)| {
                    let parts: PayloadParts<'_> = serde_json::from_str(payload).ok()?;
                    Some((parts, rs))
                }),
        };
        let (parts, row_schema) = match known {
            Some((parts, rs)) => (parts, Some(rs)),
            None => {
                let wrapper: Wrapper<'_> = serde_json::from_str(text)
                    .map_err(|e| err(format!("value is not a JSON object: {e}")))?;
                let (schema_text, payload_text) = match (wrapper.schema, wrapper.payload) {
                    (schema, Some(p)) => {
                        (schema.map(|s| s.get()).filter(|s| *s != "null"), p.get())
                    }
                    (_, None) => (None, text),
                };
                if payload_text == "null" {
                    return Ok(Decoded::Tombstone);
                }
                let parts: PayloadParts<'_> =
                    serde_json::from_str(payload_text).map_err(|e| err(payload_error(e)))?;
                let row_schema = match schema_text {
                    Some(s) => Some(self.row_schema(&rec.id.topic, s, None).map_err(err)?),
                    None => None,
                };
                (parts, row_schema)
            }
        };
        let op = match op_of(parts.op).map_err(err)? {
            Some(op) => op,
            None => {
                return Err(err(
                    "payload has no `op`: not a Debezium change event (schema-change or heartbeat records need a pipeline that reads them)".into(),
                ))
            }
        };
        let before_text = parts.before.filter(|v| v.get() != "null");
        let after_text = parts.after.filter(|v| v.get() != "null");
        // Without a schema, the images are read as JSON trees (their layout
        // comes from their fields).
        let tree = |raw: Option<&RawValue>| -> Result<Option<Json>, DecodeError> {
            match (&row_schema, raw) {
                (None, Some(r)) => serde_json::from_str(r.get())
                    .map(Some)
                    .map_err(|e| err(format!("payload is not JSON: {e}"))),
                _ => Ok(None),
            }
        };
        let (before_tree, after_tree) = (tree(before_text)?, tree(after_text)?);
        let before = before_tree.as_ref();
        let after = after_tree.as_ref();
        let (has_before, has_after) = (before_text.is_some(), after_text.is_some());

        let topic = rec.id.topic.clone();
        // The topic's last resolution, when this record has the same row
        // schema (looked up once: `key_names` below needs `self`).
        let cached = row_schema.as_ref().and_then(|rs| {
            self.last_table
                .get(&topic)
                .filter(|c| Arc::ptr_eq(&c.schema, rs))
                .cloned()
        });
        let mut layout = match (&row_schema, &cached) {
            (_, Some(c)) => c.layout.clone(),
            (Some(rs), None) => Arc::new(RowLayout {
                columns: rs.fields.iter().map(|f| f.column.clone()).collect(),
                encodings: rs.fields.iter().map(|f| Some(f.encoding.clone())).collect(),
            }),
            (None, _) => Arc::new(self.schemaless_layout(&topic, before, after)?),
        };

        // A truncate concerns the whole table: no key. A delete without row
        // images (e.g. REPLICA IDENTITY NOTHING) takes its key from the Kafka key.
        let mut key_only = op == Op::Delete && !has_before && !has_after;
        let key_names = if op == Op::Truncate {
            Arc::new(Vec::new())
        } else {
            self.key_names(rec, &layout.columns)?
        };
        if key_only && row_schema.is_none() {
            for k in key_names.iter() {
                if !layout.columns.iter().any(|c| &c.name == k) {
                    let layout = Arc::make_mut(&mut layout);
                    layout.columns.push(Column {
                        name: k.clone(),
                        ty: ColumnType::Unknown,
                        nullable: false,
                        decimal: None,
                    });
                    layout.encodings.push(None);
                }
            }
        }
        // ... and the same key names: its key indexes and table too.
        let cached = cached.filter(|c| Arc::ptr_eq(&c.key_names, &key_names));
        let computed_idx;
        let key_idx: &[u32] = match &cached {
            Some(c) => &c.key_idx,
            None => {
                let mut key_idx = Vec::with_capacity(key_names.len());
                for k in key_names.iter() {
                    let i = layout
                        .columns
                        .iter()
                        .position(|c| &c.name == k)
                        .ok_or_else(|| {
                            err(format!("key column `{k}` is not a column of the row"))
                        })?;
                    key_idx.push(i as u32);
                }
                computed_idx = key_idx;
                &computed_idx
            }
        };

        if row_schema.is_none() {
            self.gather_text_evidence(&topic, [before, after]);
        }
        let ctx = |image: &str| format!("{} ({image})", rec.id.topic);
        let image = |text: Option<&RawValue>, tree: Option<&Json>| match (text, tree) {
            (_, Some(t)) => Some(self.row_values(&topic, &layout, t)),
            (Some(t), None) => Some(payload::row_values(
                &layout.columns,
                &layout.encodings,
                t.get(),
            )),
            (None, None) => None,
        };
        let before_vals = match image(before_text, before) {
            None => None,
            Some(Ok(v)) => Some(v),
            // A delete's `before` under PostgreSQL's default REPLICA IDENTITY
            // is the key plus placeholders for NOT NULL columns, which need
            // not be valid values (empty decimal bytes): the delete needs
            // only its key, so take that from the Kafka key instead.
            Some(Err(e)) if op == Op::Delete && !has_after && key_object(rec).is_some() => {
                tracing::debug!(topic = %rec.id.topic, "a delete's `before` does not decode ({e}); using the Kafka key");
                key_only = true;
                None
            }
            Some(Err(e)) => return Err(err(format!("{}: {e}", ctx("before")))),
        };
        let after_vals = image(after_text, after)
            .transpose()
            .map_err(|e| err(format!("{}: {e}", ctx("after"))))?;

        let key = if op == Op::Truncate {
            Vec::new()
        } else if key_only {
            let key_obj = key_object(rec).ok_or_else(|| {
                err(format!(
                    "delete without `before` or `after` and without a readable Kafka key in {}",
                    rec.id.topic
                ))
            })?;
            let mut key = Vec::with_capacity(key_idx.len());
            for &i in key_idx {
                let col = &layout.columns[i as usize];
                let v = key_obj.get(&col.name).ok_or_else(|| {
                    err(format!(
                        "Kafka key has no `{}` for a delete without row images",
                        col.name
                    ))
                })?;
                key.push(
                    self.column_value(
                        &topic,
                        self.hints.for_topic(&topic),
                        col,
                        &layout.encodings[i as usize],
                        v,
                    )
                    .map_err(|e| {
                        err(format!(
                            "{} (key): column `{}`: {e}",
                            rec.id.topic, col.name
                        ))
                    })?,
                );
            }
            key
        } else {
            let image = after_vals
                .as_ref()
                .or(before_vals.as_ref())
                .ok_or_else(|| {
                    err(format!(
                        "`{}` event without `before` or `after`",
                        op_name(op)
                    ))
                })?;
            key_idx
                .iter()
                .map(|&i| image[i as usize].clone())
                .collect::<Vec<_>>()
        };
        if key.contains(&Value::Null) {
            return Err(err(format!(
                "key column is null in the row image of {}",
                rec.id.topic
            )));
        }

        let desc = match &cached {
            Some(c) => c.desc.clone(),
            None => {
                let desc =
                    self.intern_table(&topic, layout.columns.clone(), &key_names, key_idx.to_vec());
                if let Some(schema) = row_schema {
                    self.last_table.insert(
                        topic.clone(),
                        Arc::new(TopicLayout {
                            schema,
                            key_names,
                            layout,
                            key_idx: key_idx.to_vec(),
                            desc: desc.clone(),
                        }),
                    );
                }
                desc
            }
        };
        let source = parts.source.unwrap_or_default();
        let commit_time_ms = payload::int_of(source.ts_ms).or_else(|| payload::int_of(parts.ts_ms));
        Ok(Decoded::Change(ChangeEvent {
            table: desc,
            op,
            key,
            before: before_vals,
            after: after_vals,
            source_position: source.position(),
            source_order: source.order(),
            commit_time_ms,
        }))
    }

    /// The row schema of `schema_text`; `shared` is the same text as the
    /// source shares it (`RawRecord::schema`), kept so that the next record
    /// carrying it is known by pointer, without comparing bytes again.
    fn row_schema(
        &mut self,
        topic: &Arc<str>,
        schema_text: &str,
        shared: Option<&Arc<str>>,
    ) -> Result<Arc<RowSchema>, String> {
        // Fast path: a topic's schema rarely changes, and comparing bytes is
        // several times cheaper than hashing them for the map.
        if let Some((text, rs)) = self.last_schema.get(topic) {
            if shared.is_some_and(|s| Arc::ptr_eq(s, text)) || **text == *schema_text {
                return Ok(rs.clone());
            }
        }
        let text: Arc<str> = shared.cloned().unwrap_or_else(|| schema_text.into());
        if let Some(rs) = self.schemas.get(schema_text) {
            self.last_schema.insert(topic.clone(), (text, rs.clone()));
            return Ok(rs.clone());
        }
        let schema: Json =
            serde_json::from_str(schema_text).map_err(|e| format!("schema is not JSON: {e}"))?;
        let rs = Arc::new(schema::parse_envelope_schema(&schema)?);
        self.schemas.insert(schema_text.to_string(), rs.clone());
        self.last_schema.insert(topic.clone(), (text, rs.clone()));
        Ok(rs)
    }

    /// Columns of a schemaless record: the union of `after` and `before` fields,
    /// typed by the pipeline's hints or left `unknown`.
    fn schemaless_layout(
        &self,
        topic: &Arc<str>,
        before: Option<&Json>,
        after: Option<&Json>,
    ) -> Result<RowLayout, DecodeError> {
        let mut columns: Vec<Column> = Vec::new();
        let mut encodings = Vec::new();
        let hints = self.hints.for_topic(topic);
        for image in [after, before].into_iter().flatten() {
            let obj = image
                .as_object()
                .ok_or_else(|| DecodeError(format!("{topic}: row image is not a JSON object")))?;
            for name in obj.keys() {
                if columns.iter().any(|c| &c.name == name) {
                    continue;
                }
                let hint = hints.and_then(|h| h.get(name));
                columns.push(Column {
                    name: name.clone(),
                    ty: hint
                        .map(|h| h.ty.column_type())
                        .unwrap_or(ColumnType::Unknown),
                    nullable: true,
                    decimal: hint.and_then(|h| {
                        (h.ty == HintType::Decimal).then_some(crate::model::DecimalParams {
                            precision: None,
                            scale: h.scale,
                        })
                    }),
                });
                encodings.push(None);
            }
        }
        Ok(RowLayout { columns, encodings })
    }

    fn row_values(
        &self,
        topic: &Arc<str>,
        layout: &RowLayout,
        image: &Json,
    ) -> Result<Vec<Value>, String> {
        let obj = image.as_object().ok_or("row image is not a JSON object")?;
        let hints = self.hints.for_topic(topic);
        let mut out = Vec::with_capacity(layout.columns.len());
        for (col, enc) in layout.columns.iter().zip(&layout.encodings) {
            let v = obj.get(&col.name).unwrap_or(&Json::Null);
            out.push(
                self.column_value(topic, hints, col, enc, v)
                    .map_err(|e| format!("column `{}`: {e}", col.name))?,
            );
        }
        Ok(out)
    }

    /// One column's value: by the schema's encoding, else the user's hint,
    /// else as it came (refusing base64-shaped text that may be a decimal).
    fn column_value(
        &self,
        topic: &str,
        hints: Option<&HashMap<String, ColumnHint>>,
        col: &Column,
        enc: &Option<Encoding>,
        v: &Json,
    ) -> Result<Value, String> {
        if let Some(enc) = enc {
            return typed_value(enc, v);
        }
        match hints.and_then(|h| h.get(&col.name)) {
            Some(hint) => hinted_value(hint, v),
            None => match v {
                Json::String(s)
                    if self.base64_decimals_possible
                        && decimal::looks_like_base64(s)
                        && !self.is_proven_text(topic, &col.name) =>
                {
                    Err(ambiguous_base64(s))
                }
                _ => Ok(natural_value(v)),
            },
        }
    }

    /// Checked per string value of every schemaless event: borrows, never allocates.
    fn is_proven_text(&self, topic: &str, column: &str) -> bool {
        self.proven_text
            .get(topic)
            .is_some_and(|cols| cols.contains(column))
    }

    /// Mark undeclared schemaless columns that carry non-base64 text as text.
    fn gather_text_evidence(&mut self, topic: &Arc<str>, images: [Option<&Json>; 2]) {
        let hints = self.hints.for_topic(topic);
        for image in images.into_iter().flatten() {
            let Some(obj) = image.as_object() else {
                continue;
            };
            for (name, v) in obj {
                if let Json::String(s) = v {
                    if !decimal::looks_like_base64(s)
                        && hints.is_none_or(|h| !h.contains_key(name))
                        && !self.is_proven_text(topic, name)
                    {
                        self.proven_text
                            .entry(topic.clone())
                            .or_default()
                            .insert(name.clone());
                        self.learned.push(Learned::TextColumn {
                            topic: topic.to_string(),
                            column: name.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Key column names from the record's key; if it is missing or unreadable,
    /// from the configuration, else from the key last seen on the topic.
    fn key_names(
        &mut self,
        rec: &RawRecord,
        columns: &[Column],
    ) -> Result<Arc<Vec<String>>, DecodeError> {
        let topic = &rec.id.topic;
        let parsed = rec.key.as_deref().map(|k| self.parse_key(topic, k));
        if !matches!(parsed, Some(Ok(_))) {
            if let Some(names) = self.keys.for_topic(topic) {
                if let Some(missing) = names
                    .iter()
                    .find(|n| !columns.iter().any(|c| &c.name == *n))
                {
                    return Err(DecodeError(format!(
                        "configured key column `{missing}` (keys.{}) is not a column of {topic}",
                        split_topic(topic).1
                    )));
                }
                return Ok(Arc::new(names.clone()));
            }
        }
        match parsed {
            Some(Ok(names)) => {
                match self.known_keys.get(topic) {
                    // Known (by pointer when the key schema was cached).
                    Some(known) if Arc::ptr_eq(known, &names) || known == &names => {}
                    _ => {
                        self.known_keys.insert(topic.clone(), names.clone());
                        self.learned.push(Learned::Key {
                            topic: topic.to_string(),
                            columns: names.as_ref().clone(),
                        });
                    }
                }
                Ok(names)
            }
            Some(Err(why)) => match self.known_keys.get(topic) {
                Some(names) if names.iter().all(|n| columns.iter().any(|c| &c.name == n)) => {
                    Ok(names.clone())
                }
                _ => Err(DecodeError(format!(
                    "Kafka key {:?} of {topic} is unreadable ({why}) and no key for this topic is known yet; refusing to guess the row identity (declare it in the pipeline file: [keys] {} = [\"column\", ...])",
                    rec.key.as_deref().unwrap_or_default(),
                    split_topic(topic).1
                ))),
            },
            None => Ok(Arc::new(Vec::new())),
        }
    }

    fn parse_key(&mut self, topic: &Arc<str>, key: &str) -> Result<Arc<Vec<String>>, String> {
        // The common case: the topic's key schema again, compared as bytes.
        // The payload must still be one JSON value, and not null (a null
        // payload reads as a plain object below), as the general path asks.
        if let Some((known, names)) = self.last_key.get(topic) {
            if let Some((_, payload)) = split_known_schema(known, key) {
                if payload != "null" && serde_json::from_str::<&RawValue>(payload).is_ok() {
                    return Ok(names.clone());
                }
            }
        }
        let wrapper: Wrapper<'_> =
            serde_json::from_str(key).map_err(|e| format!("not JSON: {e}"))?;
        if let (Some(s), Some(_)) = (wrapper.schema, wrapper.payload) {
            let names = match self.key_schemas.get(s.get()) {
                Some(names) => Some(names.clone()),
                None => {
                    let schema: Json = serde_json::from_str(s.get()).map_err(|e| e.to_string())?;
                    schema::key_field_names(&schema).map(|names| {
                        let names = Arc::new(names);
                        self.key_schemas.insert(s.get().to_string(), names.clone());
                        names
                    })
                }
            };
            if let Some(names) = names {
                self.last_key
                    .insert(topic.clone(), (s.get().to_string(), names.clone()));
                return Ok(names);
            }
        }
        let body = match wrapper.payload {
            Some(p) => p.get(),
            None => key,
        };
        let v: Json = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        match v {
            Json::Object(m) => Ok(Arc::new(m.keys().cloned().collect())),
            Json::Null => Ok(Arc::new(Vec::new())),
            _ => Err("not a JSON object".into()),
        }
    }

    fn intern_table(
        &mut self,
        topic: &Arc<str>,
        columns: Vec<Column>,
        key_names: &[String],
        key: Vec<u32>,
    ) -> Arc<TableDesc> {
        let tk = TableKey {
            topic: topic.clone(),
            columns,
            key: key_names.to_vec(),
        };
        if let Some(d) = self.tables.get(&tk) {
            return d.clone();
        }
        let (namespace, name) = split_topic(topic);
        let desc = Arc::new(TableDesc {
            topic: topic.to_string(),
            name,
            namespace,
            columns: tk.columns.clone(),
            key,
        });
        self.tables.insert(tk, desc.clone());
        desc
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Read => "r",
        Op::Truncate => "t",
    }
}

/// The Kafka key's fields (inside a `{schema, payload}` wrapper or bare).
fn key_object(rec: &RawRecord) -> Option<serde_json::Map<String, Json>> {
    let v: Json = serde_json::from_str(rec.key.as_deref()?).ok()?;
    let v = match v.get("payload") {
        Some(p) if v.get("schema").is_some() => p.clone(),
        _ => v,
    };
    match v {
        Json::Object(m) => Some(m),
        _ => None,
    }
}

/// `server.schema.table` → (`schema`, `table`).
pub fn split_topic(topic: &str) -> (String, String) {
    let mut parts = topic.rsplitn(3, '.');
    let name = parts.next().unwrap_or(topic).to_string();
    let namespace = if topic.contains('.') {
        parts.next().unwrap_or("").to_string()
    } else {
        String::new()
    };
    (namespace, name)
}

/// A JSON integer that fits i64 (exact; serde_json keeps number text).
fn as_int(v: &Json) -> Option<i64> {
    v.as_i64()
}

fn typed_value(enc: &Encoding, v: &Json) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let want = |what: &str| format!("expected {what}, got {v}");
    Ok(match enc {
        Encoding::Boolean => Value::Boolean(v.as_bool().ok_or_else(|| want("a boolean"))?),
        Encoding::Int => Value::Int(as_int(v).ok_or_else(|| want("an integer"))?),
        Encoding::Float => match v {
            Json::Number(n) => Value::Float(n.as_f64().ok_or_else(|| want("a number"))?),
            // Connect writes non-finite doubles as strings
            Json::String(s) => Value::Float(s.parse().map_err(|_| want("a number"))?),
            _ => return Err(want("a number")),
        },
        Encoding::Text => Value::Text(v.as_str().ok_or_else(|| want("a string"))?.to_string()),
        Encoding::Bytes => {
            use base64::Engine as _;
            let s = v.as_str().ok_or_else(|| want("base64 text"))?;
            Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("bad base64 `{s}`: {e}"))?,
            )
        }
        Encoding::Decimal { scale } => match v {
            Json::String(s) => Value::Decimal(decimal::from_base64(s, *scale)?),
            Json::Number(n) => {
                Value::Decimal(decimal::canonical(&n.to_string()).ok_or_else(|| want("a decimal"))?)
            }
            _ => return Err(want("decimal bytes or number")),
        },
        Encoding::VariableScaleDecimal => {
            let scale = v
                .get("scale")
                .and_then(Json::as_u64)
                .ok_or_else(|| want("{scale, value}"))?;
            let bytes = v
                .get("value")
                .and_then(Json::as_str)
                .ok_or_else(|| want("{scale, value}"))?;
            Value::Decimal(decimal::from_base64(bytes, scale as u32)?)
        }
        Encoding::Date => Value::Date(
            as_int(v)
                .and_then(|d| i32::try_from(d).ok())
                .ok_or_else(|| want("days since the epoch"))?,
        ),
        Encoding::Time(unit) => {
            Value::Time(unit.to_micros(as_int(v).ok_or_else(|| want("an integer time"))?)?)
        }
        Encoding::LocalTimestamp(unit) => Value::LocalTimestamp(
            unit.to_micros(as_int(v).ok_or_else(|| want("an integer timestamp"))?)?,
        ),
        Encoding::ZonedTimestamp => Value::Timestamp(temporal::parse_zoned(
            v.as_str().ok_or_else(|| want("ISO text"))?,
        )?),
        Encoding::IsoDate => Value::Date(temporal::parse_date(
            v.as_str().ok_or_else(|| want("ISO text"))?,
        )?),
        Encoding::IsoTime => Value::Time(temporal::parse_time(
            v.as_str().ok_or_else(|| want("ISO text"))?,
        )?),
        Encoding::IsoLocalTimestamp => Value::LocalTimestamp(temporal::parse_local(
            v.as_str().ok_or_else(|| want("ISO text"))?,
        )?),
        Encoding::JsonText => match v {
            Json::String(s) => Value::Json(s.clone()),
            other => Value::Json(other.to_string()),
        },
        Encoding::Nested => Value::Json(v.to_string()),
    })
}

/// A schemaless value with no hint: keep exactly what came.
fn natural_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            // Not knowing whether the source column is a float or a decimal,
            // keep the exact digits that came (as a decimal), never rounded.
            None => decimal::canonical(&n.to_string())
                .map(Value::Decimal)
                .unwrap_or_else(|| Value::Text(n.to_string())),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

/// A schemaless value with a user-declared type.
fn hinted_value(hint: &ColumnHint, v: &Json) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let unit = |default: TimeUnit| hint.unit.unwrap_or(default);
    match hint.ty {
        HintType::Decimal => hinted_decimal(hint, v),
        HintType::Text => match v {
            Json::String(s) => Ok(Value::Text(s.clone())),
            other => Ok(Value::Text(other.to_string())),
        },
        HintType::Json => match v {
            Json::String(s) => Ok(Value::Json(s.clone())),
            other => Ok(Value::Json(other.to_string())),
        },
        HintType::Int => typed_value(&Encoding::Int, v),
        HintType::Float => typed_value(&Encoding::Float, v),
        HintType::Boolean => match v {
            Json::Number(n) if n.as_i64() == Some(0) => Ok(Value::Boolean(false)),
            Json::Number(n) if n.as_i64() == Some(1) => Ok(Value::Boolean(true)),
            _ => typed_value(&Encoding::Boolean, v),
        },
        HintType::Bytes => typed_value(&Encoding::Bytes, v),
        HintType::Date => match v {
            Json::String(_) => typed_value(&Encoding::IsoDate, v),
            _ => typed_value(&Encoding::Date, v),
        },
        HintType::Time => match v {
            Json::String(_) => typed_value(&Encoding::IsoTime, v),
            _ => typed_value(&Encoding::Time(unit(TimeUnit::Us)), v),
        },
        HintType::LocalTimestamp => {
            match v {
                Json::String(_) => typed_value(&Encoding::IsoLocalTimestamp, v),
                _ => {
                    let u = hint.unit.ok_or("integer timestamp but no `unit` (ms, us or ns) is configured for this column")?;
                    typed_value(&Encoding::LocalTimestamp(u), v)
                }
            }
        }
        HintType::Timestamp => {
            match v {
                Json::String(_) => typed_value(&Encoding::ZonedTimestamp, v),
                _ => {
                    let u = hint.unit.ok_or("integer timestamp but no `unit` (ms, us or ns) is configured for this column")?;
                    let Value::LocalTimestamp(us) = typed_value(&Encoding::LocalTimestamp(u), v)?
                    else {
                        unreachable!("LocalTimestamp encoding yields LocalTimestamp")
                    };
                    Ok(Value::Timestamp(us))
                }
            }
        }
    }
}

fn hinted_decimal(hint: &ColumnHint, v: &Json) -> Result<Value, String> {
    let s = match v {
        Json::Number(n) => {
            return decimal::canonical(&n.to_string())
                .map(Value::Decimal)
                .ok_or_else(|| format!("`{n}` is not a decimal"))
        }
        Json::String(s) => s,
        other => return Err(format!("expected a decimal, got {other}")),
    };
    let encoding = hint.encoding.unwrap_or(if hint.scale.is_some() {
        DecimalEncoding::Base64
    } else {
        DecimalEncoding::Auto
    });
    match encoding {
        DecimalEncoding::Text => decimal::canonical(s)
            .map(Value::Decimal)
            .ok_or_else(|| format!("`{s}` is not decimal text")),
        DecimalEncoding::Base64 => match hint.scale {
            Some(scale) => decimal::from_base64(s, scale).map(Value::Decimal),
            None => Err(unknown_scale(s)),
        },
        DecimalEncoding::Auto => {
            let is_text = decimal::canonical(s).is_some();
            let is_b64 = decimal::looks_like_base64(s);
            match (is_text, is_b64) {
                (true, false) => Ok(Value::Decimal(decimal::canonical(s).unwrap_or_default())),
                (false, true) => Err(unknown_scale(s)),
                (true, true) => Err(format!(
                    "`{s}` reads both as decimal text and as base64 decimal bytes; set `encoding = \"text\"` or `encoding = \"base64\"` (with `scale`) for this column"
                )),
                (false, false) => Err(format!("`{s}` is neither decimal text nor base64 decimal bytes")),
            }
        }
    }
}

fn ambiguous_base64(s: &str) -> String {
    format!(
        "`{s}` is base64-shaped text in a schemaless stream, and this column has carried nothing else so far: that is how Debezium writes a precise decimal (decimal.handling.mode=precise), whose scale is unknown without the schema; refusing to guess. Declare the column under [columns] in the pipeline file: type = \"decimal\" with scale = N, or type = \"text\"; or, if the connector does not use decimal.handling.mode=precise, set decimal_handling = \"string\" (or \"double\")"
    )
}

fn unknown_scale(s: &str) -> String {
    format!(
        "`{s}` is a precise decimal (base64 bytes, Debezium decimal.handling.mode=precise) but the stream carries no schema, so its scale is unknown; refusing to guess. Set `scale` for this column under [columns], or enable schemas on the converter"
    )
}

#[cfg(test)]
mod tests;
