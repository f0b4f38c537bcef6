//! Read-only views over the host's batch: a change, its table and its rows.

use crate::wit;
use crate::{ColumnType, Op, Value};

/// A source table's descriptor, with name lookup.
pub struct Table<'a> {
    raw: &'a wit::Table,
}

impl<'a> Table<'a> {
    pub(crate) fn new(raw: &'a wit::Table) -> Self {
        Table { raw }
    }

    /// Kafka topic, e.g. `pgserver1.public.orders`.
    pub fn topic(&self) -> &'a str {
        &self.raw.topic
    }

    /// Source table name (last topic segment).
    pub fn name(&self) -> &'a str {
        &self.raw.name
    }

    /// Schema or database segment of the topic.
    pub fn namespace(&self) -> &'a str {
        &self.raw.namespace
    }

    /// Column descriptors, in value order.
    pub fn columns(&self) -> &'a [wit::Column] {
        &self.raw.columns
    }

    /// Indices of the key columns, in key order.
    pub fn key_indices(&self) -> &'a [u32] {
        &self.raw.key
    }

    /// Names of the key columns, in key order.
    pub fn key_names(&self) -> impl Iterator<Item = &'a str> + 'a {
        let cols = &self.raw.columns;
        self.raw
            .key
            .iter()
            .filter_map(move |&i| cols.get(i as usize).map(|c| c.name.as_str()))
    }

    /// Position of a column by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.raw.columns.iter().position(|c| c.name == name)
    }

    /// Type of a column by name.
    pub fn type_of(&self, name: &str) -> Option<ColumnType> {
        self.raw
            .columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.ty)
    }
}

/// One change event with typed access to its rows.
pub struct Change<'a> {
    table: &'a Table<'a>,
    raw: &'a wit::Change,
}

impl<'a> Change<'a> {
    pub(crate) fn new(table: &'a Table<'a>, raw: &'a wit::Change) -> Self {
        Change { table, raw }
    }

    /// The source table this change belongs to.
    pub fn table(&self) -> &'a Table<'a> {
        self.table
    }

    pub fn op(&self) -> Op {
        self.raw.op
    }

    /// Primary-key values in key order.
    pub fn key(&self) -> &'a [Value] {
        &self.raw.key
    }

    /// Row before the change, if the source sent one.
    pub fn before(&self) -> Option<Row<'a>> {
        self.raw.before.as_deref().map(|values| Row {
            table: self.table,
            values,
        })
    }

    /// Row after the change (none for deletes and truncates).
    pub fn after(&self) -> Option<Row<'a>> {
        self.raw.after.as_deref().map(|values| Row {
            table: self.table,
            values,
        })
    }

    /// Source commit time in ms since the epoch (0 when unknown: WIT 0.1).
    #[cfg(feature = "wit-0-1")]
    pub fn event_time_ms(&self) -> i64 {
        self.raw.event_time_ms
    }

    /// Source commit time in ms since the epoch, when the event gives it.
    #[cfg(not(feature = "wit-0-1"))]
    pub fn commit_time_ms(&self) -> Option<i64> {
        self.raw.commit_time_ms
    }

    /// Kafka partition and offset, plus the connector position when known.
    pub fn position(&self) -> &'a wit::Position {
        &self.raw.position
    }
}

/// A row image: positional values with lookup by column name.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    table: &'a Table<'a>,
    values: &'a [Value],
}

impl<'a> Row<'a> {
    #[cfg_attr(feature = "wit-0-1", allow(dead_code))]
    pub(crate) fn new(table: &'a Table<'a>, values: &'a [Value]) -> Self {
        Row { table, values }
    }

    /// All values, in the table's column order.
    pub fn values(&self) -> &'a [Value] {
        self.values
    }

    /// Value of a column, or `None` if the table has no such column.
    pub fn get(&self, column: &str) -> Option<&'a Value> {
        self.table.index_of(column).and_then(|i| self.values.get(i))
    }

    /// Value of a column that must exist.
    pub fn require(&self, column: &str) -> Result<&'a Value, String> {
        self.get(column)
            .ok_or_else(|| format!("column `{column}` missing in {}", self.table.topic()))
    }

    /// `(column, value)` pairs in column order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a wit::Column, &'a Value)> + 'a {
        self.table.columns().iter().zip(self.values.iter())
    }
}
