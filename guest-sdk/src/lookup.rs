//! Lookups: the current row of a table the host keeps, by primary key, for
//! logic that needs a value at the time of a change rather than a join the
//! host maintains (a join's output follows later changes of both tables; a
//! looked-up value is what the table held when the change was processed).
//!
//! Declare the tables with [`PluginInfo::lookup`]; read them with
//! [`lookup`] from [`Plugin::on_change`](crate::Plugin::on_change). The
//! host then runs the plugin inside the sink's transaction and applies the
//! looked-up tables' changes in order between calls, so a lookup sees every
//! change before the one being processed and none after it.

use crate::bindings::sluice::transform::host;
use crate::wit;
use crate::{PluginInfo, Value};

impl PluginInfo {
    /// Read `table` (a table name or a full topic) with [`lookup`].
    pub fn lookup(mut self, table: &str) -> Self {
        self.lookups.push(table.into());
        self
    }
}

/// A row a lookup found: the table's columns and the row's values.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundRow {
    columns: Vec<wit::Column>,
    values: Vec<Value>,
}

impl FoundRow {
    /// All values, in the table's column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The table's columns.
    pub fn columns(&self) -> &[wit::Column] {
        &self.columns
    }

    /// Value of a column, or `None` if the table has no such column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let i = self.columns.iter().position(|c| c.name == column)?;
        self.values.get(i)
    }

    /// Value of a column that must exist.
    pub fn require(&self, column: &str) -> Result<&Value, String> {
        self.get(column)
            .ok_or_else(|| format!("column `{column}` missing in the looked-up row"))
    }
}

/// The current row of `table` (declared with [`PluginInfo::lookup`]) whose
/// primary key is `key` (its values in key order); `Ok(None)` when there is
/// no such row. An `Err` names an undeclared table or a key of the wrong
/// length.
pub fn lookup(table: &str, key: &[Value]) -> Result<Option<FoundRow>, String> {
    Ok(host::lookup(table, key)?.map(|row| FoundRow {
        columns: row.columns,
        values: row.values,
    }))
}
