//! Stored tables: one copy, per pipeline, of the current rows of each
//! source table that joins or lookups read (Materialize's shared
//! arrangements, Kafka Streams' KTable behind a GlobalKTable). Every join
//! side and every lookup of a topic reads the same rows: a join keeps only
//! its join-key index beside them, a lookup reads them by primary key.
//!
//! Rows are keyed by their identity (`codec::row_identity`: topic and
//! primary key) and keep the position of their last change, so a
//! re-delivered change is known and changes nothing. A deleted row keeps
//! its position. Storage-free like the other operators: the sink loads what
//! a batch needs, applies the batch's changes in order and writes the rows
//! that changed, in the batch's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::codec::{self, row_identity, CorruptState, Reader, Writer};
use crate::model::{ChangeEvent, Column, ColumnType, DecimalParams, Op, SourceOrder, Value};

/// One change of a stored table, carried to the sink's commit (one per
/// event, whoever reads the table).
#[derive(Clone, Debug)]
pub struct TableChange {
    pub topic: String,
    /// The table's name in the event (what a lookup may declare instead of
    /// the topic).
    pub name: String,
    /// The row's identity (`codec::row_identity`).
    pub row_key: Vec<u8>,
    /// How many values the primary key has.
    pub key_len: usize,
    pub order: Option<SourceOrder>,
    /// The row after the change; `None`: deleted.
    pub image: Option<Image>,
}

impl TableChange {
    /// What `event` does to its stored table, or why the table cannot keep
    /// it (the event is dead-lettered with that reason).
    pub fn of(event: &ChangeEvent) -> Result<TableChange, String> {
        let what = || format!("stored table {}", event.table.topic);
        if event.key.is_empty() {
            return Err(format!("{}: the event has no primary key", what()));
        }
        let row_key = row_identity(&event.table.topic, &event.key);
        if row_key.len() > codec::MAX_KEY {
            return Err(format!(
                "{}: the primary key takes {} bytes encoded, more than the {} a stored table keeps",
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
            topic: event.table.topic.clone(),
            name: event.table.name.clone(),
            row_key,
            key_len: event.key.len(),
            order: event.source_order,
            image,
        })
    }

    /// Whether a declared table (a name or a full topic) means this
    /// event's table.
    pub fn names(declared: &str, event: &ChangeEvent) -> bool {
        declares(declared, &event.table.topic, &event.table.name)
    }
}

/// Whether a table as a plugin declares it (by name, or by full topic when
/// two topics carry one name) means the table of `topic` named `name`.
pub fn declares(declared: &str, topic: &str, name: &str) -> bool {
    declared == name || declared == topic
}

/// The topic a row identity (`codec::row_identity`) belongs to.
pub fn topic_of(row_key: &[u8]) -> Result<String, CorruptState> {
    Reader::new(row_key).string()
}

/// The `sluice_state.operator` a topic's rows are stored under.
pub fn operator(topic: &str) -> String {
    format!("table/{topic}")
}

/// A row's columns and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub columns: Arc<[Column]>,
    pub values: Vec<Value>,
}

/// A stored table's row.
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
        _ => return Err(CorruptState("stored column type")),
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
            return Err(CorruptState("stored row version"));
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

impl StoredRow {
    /// A row the database does not hold (loaded as absent).
    pub fn absent() -> StoredRow {
        StoredRow {
            order: None,
            image: None,
        }
    }

    /// Whether this stands for a row the database does not hold.
    pub fn is_absent(&self) -> bool {
        self.order.is_none() && self.image.is_none()
    }
}

/// One stored table's rows, as far as they are loaded.
#[derive(Debug, Default)]
pub struct TableRows {
    /// By row identity; a row loaded as absent is kept as `StoredRow::absent`.
    pub rows: HashMap<Vec<u8>, StoredRow>,
    /// The primary key's length, once a change or a row showed it.
    pub key_len: Option<usize>,
    /// Every stored row is loaded (lookups need the whole table).
    pub whole: bool,
}

impl TableRows {
    /// (rows, encoded bytes), for the summary.
    pub fn size(&self) -> (usize, usize) {
        let live = self.rows.iter().filter(|(_, r)| !r.is_absent());
        live.fold((0, 0), |(n, b), (k, r)| {
            (n + 1, b + k.len() + r.encode().len())
        })
    }
}

/// The stored tables of a pipeline, as far as they are loaded, with the
/// rows a commit changed.
#[derive(Debug, Default)]
pub struct TableStore {
    pub tables: HashMap<String, TableRows>,
    /// Per topic, the table name its events carry (a lookup may declare
    /// either).
    pub names: HashMap<String, String>,
    /// Whether every stored topic's name is known (read from the sink).
    pub names_loaded: bool,
    /// Rows changed since the last write, per topic.
    pub dirty: BTreeMap<String, BTreeSet<Vec<u8>>>,
    /// Topics whose name was learned since the last write.
    pub new_names: BTreeSet<String>,
}

impl TableStore {
    /// Apply a change unless it is not newer than the stored row (a
    /// re-delivery); true when applied. The row must be loaded.
    pub fn apply(&mut self, change: &TableChange) -> bool {
        if !self.names.contains_key(&change.topic) {
            self.names.insert(change.topic.clone(), change.name.clone());
            self.new_names.insert(change.topic.clone());
        }
        let rows = self.tables.entry(change.topic.clone()).or_default();
        if let (Some(new), Some(old)) = (
            change.order,
            rows.rows.get(&change.row_key).and_then(|r| r.order),
        ) {
            if new <= old {
                return false;
            }
        }
        rows.key_len = Some(change.key_len);
        rows.rows.insert(
            change.row_key.clone(),
            StoredRow {
                order: change.order,
                image: change.image.clone(),
            },
        );
        self.dirty
            .entry(change.topic.clone())
            .or_default()
            .insert(change.row_key.clone());
        true
    }

    /// The stored row with identity `row_key`, if loaded and held (a row
    /// loaded as absent is `None`, as is one not loaded: `has` tells).
    pub fn row(&self, row_key: &[u8]) -> Option<&StoredRow> {
        let topic = topic_of(row_key).ok()?;
        let row = self.tables.get(&topic)?.rows.get(row_key)?;
        (!row.is_absent()).then_some(row)
    }

    /// Whether the row with identity `row_key` is loaded (present or absent).
    pub fn has(&self, row_key: &[u8]) -> bool {
        let Ok(topic) = topic_of(row_key) else {
            return false;
        };
        self.tables
            .get(&topic)
            .is_some_and(|t| t.whole || t.rows.contains_key(row_key))
    }

    /// Add rows read from the sink; a row already held is newer (changed in
    /// this transaction) and stays.
    pub fn load(&mut self, topic: &str, rows: Vec<(Vec<u8>, StoredRow)>, whole: bool) {
        let table = self.tables.entry(topic.to_string()).or_default();
        for (k, row) in rows {
            if table.key_len.is_none() {
                table.key_len = row_key_len(&k);
            }
            table.rows.entry(k).or_insert(row);
        }
        table.whole |= whole;
    }

    /// The topics a declared table (a name or a full topic) means, among
    /// the known ones.
    pub fn topics_named(&self, declared: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .names
            .iter()
            .filter(|(topic, name)| declares(declared, topic, name))
            .map(|(topic, _)| topic.clone())
            .collect();
        if out.is_empty() && self.tables.contains_key(declared) {
            out.push(declared.to_string());
        }
        out.sort();
        out
    }

    /// The live row of the declared table with primary key `key`; the
    /// table must be loaded whole.
    pub fn get(&self, declared: &str, key: &[Value]) -> Result<Option<&Image>, String> {
        let topics = self.topics_named(declared);
        let topic = match topics.as_slice() {
            [] => return Ok(None),
            [one] => one,
            many => {
                return Err(format!(
                    "`{declared}` names {} topics ({}): declare the full topic",
                    many.len(),
                    many.join(", ")
                ))
            }
        };
        let Some(table) = self.tables.get(topic) else {
            return Ok(None);
        };
        if let Some(n) = table.key_len.filter(|n| *n != key.len()) {
            return Err(format!(
                "the key has {} values; the table's primary key has {n}",
                key.len()
            ));
        }
        Ok(table
            .rows
            .get(&row_identity(topic, key))
            .and_then(|r| r.image.as_ref()))
    }

    /// Forget everything (another host may have changed the tables, or an
    /// attempt failed).
    pub fn clear(&mut self) {
        *self = TableStore::default();
    }
}

/// The number of primary-key values in a row identity.
fn row_key_len(row_key: &[u8]) -> Option<usize> {
    let mut r = Reader::new(row_key);
    r.string().ok()?;
    r.values().ok().map(|v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableDesc;

    fn event(topic: &str, op: Op, id: i64, segment: Option<&str>, lsn: u64) -> ChangeEvent {
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
                topic: topic.into(),
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

    fn change(op: Op, seg: Option<&str>, lsn: u64) -> TableChange {
        TableChange::of(&event("pg.public.customers", op, 1, seg, lsn)).unwrap()
    }

    #[test]
    fn rows_follow_changes_and_ignore_redeliveries() {
        let mut t = TableStore::default();
        assert!(TableChange::of(&event("pg.public.customers", Op::Truncate, 1, None, 1)).is_err());
        assert!(t.apply(&change(Op::Create, Some("smb"), 10)));
        assert!(t.apply(&change(Op::Update, Some("enterprise"), 20)));
        // a re-delivery of the first change changes nothing
        assert!(!t.apply(&change(Op::Create, Some("smb"), 10)));
        for declared in ["customers", "pg.public.customers"] {
            let row = t.get(declared, &[Value::Int(1)]).unwrap().unwrap();
            assert_eq!(row.values[1], Value::Text("enterprise".into()));
        }
        assert!(t.get("customers", &[Value::Int(2)]).unwrap().is_none());
        assert!(t.get("customers", &[Value::Int(1), Value::Int(2)]).is_err());
        assert!(t.apply(&change(Op::Delete, None, 30)));
        assert!(t.get("customers", &[Value::Int(1)]).unwrap().is_none());
        // a re-delivered create after the delete does not revive the row
        assert!(!t.apply(&change(Op::Create, Some("smb"), 10)));
        assert!(t.get("customers", &[Value::Int(1)]).unwrap().is_none());
        assert_eq!(t.dirty["pg.public.customers"].len(), 1);
        assert!(t.new_names.contains("pg.public.customers"));
    }

    #[test]
    fn a_name_two_topics_carry_must_be_declared_by_topic() {
        let mut t = TableStore::default();
        for (topic, seg) in [("a.public.customers", "smb"), ("b.public.customers", "mid")] {
            assert!(t.apply(&TableChange::of(&event(topic, Op::Create, 1, Some(seg), 1)).unwrap()));
        }
        let err = t.get("customers", &[Value::Int(1)]).unwrap_err();
        assert!(err.contains("declare the full topic"), "{err}");
        let row = t
            .get("b.public.customers", &[Value::Int(1)])
            .unwrap()
            .unwrap();
        assert_eq!(row.values[1], Value::Text("mid".into()));
    }

    #[test]
    fn rows_read_from_the_sink_do_not_replace_newer_ones() {
        let mut t = TableStore::default();
        assert!(t.apply(&change(Op::Update, Some("new"), 20)));
        let stale = change(Op::Create, Some("old"), 10);
        let key = stale.row_key.clone();
        t.load(
            "pg.public.customers",
            vec![(
                key.clone(),
                StoredRow {
                    order: stale.order,
                    image: stale.image,
                },
            )],
            true,
        );
        assert!(t.has(&key));
        assert_eq!(t.row(&key).unwrap().order, Some(SourceOrder([20, 0, 0])));
        assert_eq!(t.tables["pg.public.customers"].key_len, Some(1));
    }

    #[test]
    fn stored_rows_round_trip_and_share_columns() {
        let change = change(Op::Create, Some("mid"), 5);
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
        assert_eq!(topic_of(&change.row_key).unwrap(), "pg.public.customers");
    }
}
