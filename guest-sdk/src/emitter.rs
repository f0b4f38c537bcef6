//! Collects a plugin's writes and interns sink-table declarations, so a table's
//! column names cross the boundary once per batch rather than once per row.

use crate::view::Table;
use crate::wit;
use crate::{ColumnType, DecimalParams, Value};

/// A sink column declaration.
pub type Column = wit::Column;

impl Column {
    /// A column without decimal parameters.
    pub fn new(name: &str, ty: ColumnType, nullable: bool) -> Self {
        wit::Column {
            name: name.to_string(),
            ty,
            nullable,
            decimal: None,
        }
    }

    /// A decimal column with known precision and scale.
    pub fn decimal(name: &str, precision: u32, scale: u32, nullable: bool) -> Self {
        wit::Column {
            name: name.to_string(),
            ty: ColumnType::Decimal,
            nullable,
            decimal: Some(DecimalParams {
                precision: Some(precision),
                scale: Some(scale),
            }),
        }
    }
}

/// Handle to a sink table declared in the current batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkRef(u32);

/// Where a plugin writes: declare sink tables, then upsert rows or delete keys.
#[derive(Default)]
pub struct Emitter {
    tables: Vec<wit::SinkTable>,
    pending: Vec<wit::Output>,
}

impl Emitter {
    /// Declare (or find the existing declaration of) a sink table.
    /// `key` names the primary-key columns; each must be among `columns`.
    pub fn sink_table(
        &mut self,
        name: &str,
        columns: &[Column],
        key: &[&str],
    ) -> Result<SinkRef, String> {
        let mut key_idx = Vec::with_capacity(key.len());
        for k in key {
            let i = columns
                .iter()
                .position(|c| c.name == *k)
                .ok_or_else(|| format!("sink table `{name}`: key column `{k}` is not a column"))?;
            key_idx.push(i as u32);
        }
        Ok(self.intern(name, columns, key_idx))
    }

    /// Declare a sink table with the same columns and key as a source table.
    pub fn sink_table_like(&mut self, name: &str, source: &Table<'_>) -> SinkRef {
        self.intern(name, source.columns(), source.key_indices().to_vec())
    }

    fn intern(&mut self, name: &str, columns: &[Column], key: Vec<u32>) -> SinkRef {
        if let Some(i) = self
            .tables
            .iter()
            .position(|t| t.name == name && t.key == key && t.columns.as_slice() == columns)
        {
            return SinkRef(i as u32);
        }
        self.tables.push(wit::SinkTable {
            name: name.to_string(),
            columns: columns.to_vec(),
            key,
        });
        SinkRef((self.tables.len() - 1) as u32)
    }

    fn table(&self, t: SinkRef) -> Result<&wit::SinkTable, String> {
        self.tables
            .get(t.0 as usize)
            .ok_or_else(|| format!("unknown sink table handle {}", t.0))
    }

    /// Insert or replace a whole row (one value per declared column).
    pub fn upsert(&mut self, table: SinkRef, values: Vec<Value>) -> Result<(), String> {
        let decl = self.table(table)?;
        if values.len() != decl.columns.len() {
            return Err(format!(
                "upsert into `{}`: {} values for {} columns",
                decl.name,
                values.len(),
                decl.columns.len()
            ));
        }
        self.pending.push(wit::Output::Upsert(wit::Row {
            table: table.0,
            values,
        }));
        Ok(())
    }

    /// Delete the row with this key (one value per key column, in key order).
    pub fn delete(&mut self, table: SinkRef, key: Vec<Value>) -> Result<(), String> {
        let decl = self.table(table)?;
        if key.len() != decl.key.len() {
            return Err(format!(
                "delete from `{}`: {} key values for {} key columns",
                decl.name,
                key.len(),
                decl.key.len()
            ));
        }
        self.pending.push(wit::Output::Delete(wit::Row {
            table: table.0,
            values: key,
        }));
        Ok(())
    }

    pub(crate) fn finish_change(&mut self, result: Result<(), String>) -> wit::ChangeResult {
        let outputs = std::mem::take(&mut self.pending);
        result.map(|()| outputs)
    }

    pub(crate) fn into_tables(self) -> Vec<wit::SinkTable> {
        self.tables
    }
}
