//! Lookup tables: the current rows of a table that plugins read by primary
//! key (`host.lookup`), for logic that needs a value rather than a maintained
//! join (Kafka Streams' GlobalKTable, Flink's lookup join). One table per
//! declared name, shared by every plugin that declares it; kept from the
//! table's change events in batch order, so a lookup sees every change before
//! the one being processed and none after it.
//!
//! Plugins that declare lookups run in the sink's commit (like keyed
//! plugins): the table's rows are state committed with the offsets, and
//! every host of a pipeline reads the one copy in the sink.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::codec::{self, CorruptState, Reader, Writer};
use crate::model::{ChangeEvent, Column, ColumnType, DecimalParams, Op, SourceOrder, Value};
use crate::plugin::runtime::Compiled;

/// A plugin whose `process` runs in the commit because it reads tables.
#[derive(Debug)]
pub struct LookupPlugin {
    pub name: String,
    /// The tables it may read, as declared (a table name or a full topic).
    pub tables: Vec<String>,
    /// `None` only in tests that call no plugin.
    pub code: Option<Arc<Compiled>>,
}

/// One change for a plugin with lookups, carried to the sink's commit.
#[derive(Debug)]
pub struct LookupInput {
    pub plugin: Arc<LookupPlugin>,
    pub event: ChangeEvent,
}

/// One change of a looked-up table, carried to the sink's commit.
#[derive(Clone, Debug)]
pub struct TableChange {
    /// The table as plugins declared it.
    pub table: String,
    /// The topic the change came from (one declared name, one topic).
    pub topic: String,
    /// The primary key's values, encoded (`codec::key`).
    pub row_key: Vec<u8>,
    pub key_len: usize,
    pub order: Option<SourceOrder>,
    /// The row after the change; `None`: deleted.
    pub image: Option<Image>,
}

impl TableChange {
    /// What `event` does to the looked-up `table`, or why it cannot be
    /// kept (the event is dead-lettered with that reason).
    pub fn of(table: &str, event: &ChangeEvent) -> Result<TableChange, String> {
        let what = || format!("looked-up table `{table}` ({})", event.table.topic);
        if event.key.is_empty() {
            return Err(format!("{}: the event has no primary key", what()));
        }
        let row_key = codec::key(&event.key);
        if row_key.len() > codec::MAX_KEY {
            return Err(format!(
                "{}: the primary key takes {} bytes encoded, more than the {} a lookup keeps",
                what(),
                row_key.len(),
                codec::MAX_KEY
            ));
        }
        let image = match (event.op, &event.after) {
            (Op::Delete, _) => None,
            (Op::Truncate, _) => {
                return Err(format!("{}: TRUNCATE cannot be applied yet", what()));
            }
            (_, Some(after)) => Some(Image {
                columns: Arc::from(event.table.columns.as_slice()),
                values: after.clone(),
            }),
            (op, None) => return Err(format!("{}: {op:?} event without an `after` row", what())),
        };
        Ok(TableChange {
            table: table.to_string(),
            topic: event.table.topic.clone(),
            row_key,
            key_len: event.key.len(),
            order: event.source_order,
            image,
        })
    }

    /// Whether a declared lookup name means this event's table.
    pub fn names(declared: &str, event: &ChangeEvent) -> bool {
        declared == event.table.name || declared == event.table.topic
    }
}

/// A row's columns and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub columns: Arc<[Column]>,
    pub values: Vec<Value>,
}

/// A looked-up table's row as the sink keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    /// Position of the last change applied (re-deliveries change nothing).
    pub order: Option<SourceOrder>,
    /// `None`: deleted (the position stays).
    pub image: Option<Image>,
}

/// A column type's stored tag (the inverse of `type_of`).
fn type_tag(t: ColumnType) -> u8 {
    match t {
        ColumnType::Unknown => 0,
        ColumnType::Boolean => 1,
        ColumnType::Int => 2,
        ColumnType::Float => 3,
        ColumnType::Decimal => 4,
        ColumnType::Text => 5,
        ColumnType::Bytes => 6,
        ColumnType::Timestamp => 7,
        ColumnType::LocalTimestamp => 8,
        ColumnType::Date => 9,
        ColumnType::Time => 10,
        ColumnType::Json => 11,
    }
}

fn type_of(tag: u8) -> Result<ColumnType, CorruptState> {
    Ok(match tag {
        0 => ColumnType::Unknown,
        1 => ColumnType::Boolean,
        2 => ColumnType::Int,
        3 => ColumnType::Float,
        4 => ColumnType::Decimal,
        5 => ColumnType::Text,
        6 => ColumnType::Bytes,
        7 => ColumnType::Timestamp,
        8 => ColumnType::LocalTimestamp,
        9 => ColumnType::Date,
        10 => ColumnType::Time,
        11 => ColumnType::Json,
        _ => return Err(CorruptState("lookup column type")),
    })
}

impl StoredRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.order(self.order);
        match &self.image {
            None => w.u8(0),
            Some(image) => {
                w.u8(1);
                w.u32(image.columns.len() as u32);
                for c in image.columns.iter() {
                    w.str(&c.name);
                    w.u8(type_tag(c.ty));
                    w.u8(c.nullable as u8);
                    match c.decimal {
                        None => w.u8(0),
                        Some(d) => {
                            w.u8(1);
                            w.i64(d.precision.map_or(-1, i64::from));
                            w.i64(d.scale.map_or(-1, i64::from));
                        }
                    }
                }
                w.values(&image.values);
            }
        }
        w.buf
    }

    /// Decode; `columns` interns column lists (rows of one schema share one).
    pub fn decode(
        bytes: &[u8],
        columns: &mut HashMap<Vec<u8>, Arc<[Column]>>,
    ) -> Result<StoredRow, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("lookup row version"));
        }
        let order = r.order()?;
        let image = match r.u8()? {
            0 => None,
            _ => {
                let start = bytes.len() - r.buf.len();
                let n = r.u32()? as usize;
                let mut cols = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let name = r.string()?;
                    let ty = type_of(r.u8()?)?;
                    let nullable = r.u8()? != 0;
                    let decimal = match r.u8()? {
                        0 => None,
                        _ => {
                            let p = r.i64()?;
                            let s = r.i64()?;
                            Some(DecimalParams {
                                precision: u32::try_from(p).ok(),
                                scale: u32::try_from(s).ok(),
                            })
                        }
                    };
                    cols.push(Column {
                        name,
                        ty,
                        nullable,
                        decimal,
                    });
                }
                let end = bytes.len() - r.buf.len();
                let columns = columns
                    .entry(bytes[start..end].to_vec())
                    .or_insert_with(|| Arc::from(cols))
                    .clone();
                Some(Image {
                    columns,
                    values: r.values()?,
                })
            }
        };
        Ok(StoredRow { order, image })
    }
}

/// One looked-up table's rows (all of them: a lookup may ask for any key).
#[derive(Debug, Default)]
pub struct TableRows {
    pub rows: HashMap<Vec<u8>, StoredRow>,
    /// The primary key's length, once a change showed it.
    pub key_len: Option<usize>,
    /// The topic its changes come from, once one came (this host).
    pub topic: Option<String>,
}

impl TableRows {
    /// Apply a change unless it is not newer than the stored row's (a
    /// re-delivery); true when applied.
    pub fn apply(&mut self, change: &TableChange) -> bool {
        self.topic.get_or_insert_with(|| change.topic.clone());
        if let (Some(new), Some(old)) = (
            change.order,
            self.rows.get(&change.row_key).and_then(|r| r.order),
        ) {
            if new <= old {
                return false;
            }
        }
        self.key_len = Some(change.key_len);
        self.rows.insert(
            change.row_key.clone(),
            StoredRow {
                order: change.order,
                image: change.image.clone(),
            },
        );
        true
    }

    /// The live row with primary key `key`.
    pub fn get(&self, key: &[Value]) -> Result<Option<&Image>, String> {
        if let Some(n) = self.key_len.filter(|n| *n != key.len()) {
            return Err(format!(
                "the key has {} values; the table's primary key has {n}",
                key.len()
            ));
        }
        Ok(self
            .rows
            .get(&codec::key(key))
            .and_then(|r| r.image.as_ref()))
    }

    /// (rows, encoded bytes), for the summary.
    pub fn size(&self) -> (usize, usize) {
        let bytes = self.rows.iter().map(|(k, r)| k.len() + r.encode().len());
        (self.rows.len(), bytes.sum())
    }
}

/// The looked-up tables, by declared name, shared between the sink (which
/// applies changes between plugin calls) and the plugin instances (which
/// read them during a call).
pub type Tables = Arc<RwLock<HashMap<String, TableRows>>>;

/// What one plugin instance may read: its declared tables, in `tables`.
#[derive(Clone)]
pub struct LookupAccess {
    pub declared: Vec<String>,
    pub tables: Tables,
}

impl LookupAccess {
    /// The current row of `table` with primary key `key` (a row image:
    /// its columns and values).
    pub fn find(&self, table: &str, key: &[Value]) -> Result<Option<Image>, String> {
        if !self.declared.iter().any(|t| t == table) {
            return Err(format!(
                "`{table}` is not among this plugin's lookups ({})",
                self.declared.join(", ")
            ));
        }
        let tables = self
            .tables
            .read()
            .map_err(|_| "the lookup tables are poisoned".to_string())?;
        match tables.get(table) {
            Some(rows) => rows.get(key).map(|r| r.cloned()),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableDesc;

    fn event(op: Op, id: i64, segment: Option<&str>, lsn: u64) -> ChangeEvent {
        let columns = vec![
            Column {
                name: "id".into(),
                ty: ColumnType::Int,
                nullable: false,
                decimal: None,
            },
            Column {
                name: "segment".into(),
                ty: ColumnType::Text,
                nullable: true,
                decimal: Some(DecimalParams {
                    precision: Some(4),
                    scale: None,
                }),
            },
        ];
        ChangeEvent {
            table: Arc::new(TableDesc {
                topic: "pg.public.customers".into(),
                name: "customers".into(),
                namespace: "public".into(),
                columns,
                key: vec![0],
            }),
            op,
            key: vec![Value::Int(id)],
            before: None,
            after: segment.map(|s| vec![Value::Int(id), Value::Text(s.into())]),
            source_position: None,
            source_order: Some(SourceOrder([lsn, 0, 0])),
            commit_time_ms: None,
        }
    }

    #[test]
    fn rows_follow_changes_and_ignore_redeliveries() {
        let mut t = TableRows::default();
        let c = |op, seg, lsn| TableChange::of("customers", &event(op, 1, seg, lsn)).unwrap();
        assert!(TableChange::of("customers", &event(Op::Truncate, 1, None, 1)).is_err());
        assert!(t.apply(&c(Op::Create, Some("smb"), 10)));
        assert!(t.apply(&c(Op::Update, Some("enterprise"), 20)));
        // a re-delivery of the first change changes nothing
        assert!(!t.apply(&c(Op::Create, Some("smb"), 10)));
        let row = t.get(&[Value::Int(1)]).unwrap().unwrap();
        assert_eq!(row.values[1], Value::Text("enterprise".into()));
        assert!(t.get(&[Value::Int(2)]).unwrap().is_none());
        assert!(t.get(&[Value::Int(1), Value::Int(2)]).is_err());
        assert!(t.apply(&c(Op::Delete, None, 30)));
        assert!(t.get(&[Value::Int(1)]).unwrap().is_none());
        // a re-delivered create after the delete does not revive the row
        assert!(!t.apply(&c(Op::Create, Some("smb"), 10)));
        assert!(t.get(&[Value::Int(1)]).unwrap().is_none());
    }

    #[test]
    fn stored_rows_round_trip_and_share_columns() {
        let change = TableChange::of("customers", &event(Op::Create, 7, Some("mid"), 5)).unwrap();
        let row = StoredRow {
            order: change.order,
            image: change.image.clone(),
        };
        let mut interned = HashMap::new();
        let a = StoredRow::decode(&row.encode(), &mut interned).unwrap();
        let b = StoredRow::decode(&row.encode(), &mut interned).unwrap();
        assert_eq!(a, row);
        let (a, b) = (a.image.unwrap(), b.image.unwrap());
        assert!(Arc::ptr_eq(&a.columns, &b.columns));
        let gone = StoredRow {
            order: Some(SourceOrder([9, 0, 0])),
            image: None,
        };
        assert_eq!(
            StoredRow::decode(&gone.encode(), &mut interned).unwrap(),
            gone
        );
    }

    #[test]
    fn only_declared_tables_can_be_read() {
        let tables: Tables = Arc::default();
        let access = LookupAccess {
            declared: vec!["customers".into()],
            tables,
        };
        assert_eq!(access.find("customers", &[Value::Int(1)]), Ok(None));
        assert!(access
            .find("orders", &[Value::Int(1)])
            .unwrap_err()
            .contains("not among this plugin's lookups"));
    }
}
