//! The host's own typed change model. Decoding produces it, plugins receive it
//! (converted at the boundary by `plugin::bindings`), sinks write it. Nothing
//! here knows about Debezium JSON or WIT-generated types.

use std::sync::Arc;

/// Logical column type (mirrors `column-type` in the WIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Unknown,
    Boolean,
    Int,
    Float,
    Decimal,
    Text,
    Bytes,
    Timestamp,
    LocalTimestamp,
    Date,
    Time,
    Json,
}

impl ColumnType {
    /// Stable lower-case name, used in the sink's column catalog and in config.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Unknown => "unknown",
            ColumnType::Boolean => "boolean",
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Decimal => "decimal",
            ColumnType::Text => "text",
            ColumnType::Bytes => "bytes",
            ColumnType::Timestamp => "timestamp",
            ColumnType::LocalTimestamp => "local-timestamp",
            ColumnType::Date => "date",
            ColumnType::Time => "time",
            ColumnType::Json => "json",
        }
    }
}

/// Decimal precision and scale as declared by the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecimalParams {
    pub precision: Option<u32>,
    pub scale: Option<u32>,
}

/// A column of a source table or sink table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub decimal: Option<DecimalParams>,
}

/// A typed value; positional within a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Boolean(bool),
    Int(i64),
    Float(f64),
    /// Canonical decimal text (see `decode::decimal`).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// µs since the epoch, UTC.
    Timestamp(i64),
    /// µs since 1970-01-01T00:00, no zone.
    LocalTimestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// µs since midnight.
    Time(i64),
    Json(String),
}

impl Value {
    /// The column type this value would have if nothing else were known.
    pub fn natural_type(&self) -> ColumnType {
        match self {
            Value::Null => ColumnType::Unknown,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Int(_) => ColumnType::Int,
            Value::Float(_) => ColumnType::Float,
            Value::Decimal(_) => ColumnType::Decimal,
            Value::Text(_) => ColumnType::Text,
            Value::Bytes(_) => ColumnType::Bytes,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::LocalTimestamp(_) => ColumnType::LocalTimestamp,
            Value::Date(_) => ColumnType::Date,
            Value::Time(_) => ColumnType::Time,
            Value::Json(_) => ColumnType::Json,
        }
    }
}

/// Debezium's `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
    Truncate,
}

/// A source table's layout as seen on one topic: interned and shared by every
/// event with the same columns, so batches carry each descriptor once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableDesc {
    pub topic: String,
    pub name: String,
    pub namespace: String,
    pub columns: Vec<Column>,
    /// Indices into `columns`, in key order.
    pub key: Vec<u32>,
}

/// Where a record sits in its source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A record's Kafka headers, in order: shared, since a connector's records
/// usually all carry the same ones (the Kafka source reuses the previous
/// record's when they are equal, instead of copying them per record).
pub type Headers = Arc<[(String, Option<Vec<u8>>)]>;

/// A record as the source delivered it, kept for the dead-letter queue.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub id: RecordId,
    /// Kafka key as text (JSON for Debezium), if any.
    pub key: Option<String>,
    /// Kafka value as text; `None` is a tombstone. When `schema` is set,
    /// only the payload of the value's JSON envelope (`value_text` gives
    /// the whole value).
    pub value: Option<String>,
    /// Kafka headers, in order (passed on to the DLQ topic).
    pub headers: Headers,
    /// The schema of the value's `{"schema":…,"payload":…}` envelope, shared
    /// by the topic's records (`source::envelope`), when the source split it.
    pub schema: Option<Arc<str>>,
}

impl RawRecord {
    /// The value exactly as it was read.
    pub fn value_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        let value = self.value.as_deref()?;
        Some(match &self.schema {
            Some(schema) => crate::source::envelope::join(schema, value).into(),
            None => value.into(),
        })
    }
}

/// One decoded change event.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub table: Arc<TableDesc>,
    pub op: Op,
    pub key: Vec<Value>,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
    /// Connector position (Postgres LSN, binlog file:pos), when known.
    pub source_position: Option<String>,
    /// The same position, comparable: per key, a later change has a larger
    /// one (operators drop re-deliveries by it).
    pub source_order: Option<SourceOrder>,
    /// `source.ts_ms`, or the envelope's `ts_ms` when absent; `None` when
    /// the event says neither (never a made-up 0).
    pub commit_time_ms: Option<i64>,
}

/// A source position that orders the changes of one row: PostgreSQL
/// `[lsn, 0, 0]`; MySQL/MariaDB `[binlog file number, pos, row]`. Only
/// changes of the same key are compared (a snapshot shares one position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceOrder(pub [u64; 3]);

/// A sink table as a plugin declared it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkTable {
    pub name: String,
    pub columns: Vec<Column>,
    pub key: Vec<u32>,
    /// Its rows are rewritten in place as they change, most of them on
    /// nearly every batch (an aggregation's groups): PostgreSQL creates
    /// such a table with room left on each page for the rewrites.
    pub rewritten: bool,
}

/// One write for the sink.
#[derive(Clone, Debug)]
pub enum SinkWrite {
    Upsert {
        table: Arc<SinkTable>,
        values: Vec<Value>,
    },
    Delete {
        table: Arc<SinkTable>,
        key: Vec<Value>,
    },
}

/// A fact the decoder learned from the data that changes how later records
/// decode. It is committed with the offsets of the batch that taught it and
/// restored at start, so a resumed run decodes exactly like a straight one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A schemaless column carried non-base64 text, so it is text, not a
    /// base64 (precise) decimal.
    TextColumn { topic: String, column: String },
    /// The key columns last seen on a topic, for records with unreadable keys.
    Key { topic: String, columns: Vec<String> },
}

impl SinkWrite {
    /// The sink table written.
    pub fn table(&self) -> &Arc<SinkTable> {
        match self {
            SinkWrite::Upsert { table, .. } | SinkWrite::Delete { table, .. } => table,
        }
    }
}

/// Which stage rejected a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Decode,
    Plugin,
    /// An operator (an aggregation, a join) refused the event: it changes
    /// nothing there (a late row, an impossible retraction).
    Aggregate,
    Sink,
}

impl Stage {
    /// Name used in the DLQ and in Kafka Connect style headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Plugin => "plugin",
            Stage::Aggregate => "aggregate",
            Stage::Sink => "sink",
        }
    }
}

/// A rejected record with the reason, bound for the dead-letter queue.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub record: RawRecord,
    pub stage: Stage,
    /// The plugin that rejected it, for `Stage::Plugin`.
    pub plugin: Option<String>,
    pub reason: String,
}
