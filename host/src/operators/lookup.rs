//! Lookups: plugins read the current row of a table by primary key
//! (`host.lookup`), for logic that needs a value rather than a maintained
//! join (Kafka Streams' GlobalKTable, Flink's lookup join). They read the
//! pipeline's stored tables (`operators::table`), the same rows joins of
//! those tables read; the rows follow the table's change events in batch
//! order, so a lookup sees every change before the one being processed and
//! none after it.
//!
//! Plugins that declare lookups run in the sink's commit (like keyed
//! plugins): the tables are state committed with the offsets, and every
//! host of a pipeline reads the one copy in the sink.

use std::sync::{Arc, RwLock};

use super::table::{Image, TableStore};
use crate::model::{ChangeEvent, Value};
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

/// The stored tables, shared between the sink (which applies changes
/// between plugin calls) and the plugin instances (which read them during a
/// call).
pub type Tables = Arc<RwLock<TableStore>>;

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
        tables.get(table, key).map(|r| r.cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
