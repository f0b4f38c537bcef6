//! Outputs made inside the batch's transaction, by keyed plugins and by
//! joins: per source record, so a write the sink cannot take dead-letters
//! the record that caused it and the rest commit. Their tables are only
//! known inside the transaction (DDL cannot run there): a table not yet
//! made rolls the attempt back to make it first.

use super::*;
use crate::model::RawRecord;

/// Outputs made inside the transaction (by keyed plugins, by joins), per
/// source record, with what was refused on the way.
#[derive(Default)]
pub(super) struct DerivedOutputs {
    /// The writes, per source record that caused them (written after the
    /// events' own writes, before aggregations).
    pub(super) outputs: Vec<EventWrites>,
    /// Changes refused (a keyed plugin refused or trapped on them, a join
    /// could not read them).
    pub(super) dead: Vec<DeadLetter>,
    /// Re-deliveries skipped.
    pub(super) duplicates: u64,
}

impl DerivedOutputs {
    /// `plugin`'s writes for `record` (none: nothing to keep).
    pub(super) fn written(&mut self, record: &RawRecord, plugin: &str, writes: Vec<SinkWrite>) {
        if !writes.is_empty() {
            self.outputs.push(EventWrites::written(
                record.clone(),
                Some(plugin.to_string()),
                writes,
            ));
        }
    }

    /// `plugin` refused `record` (or trapped on it): a dead letter.
    pub(super) fn refused(&mut self, record: &RawRecord, plugin: &str, reason: String) {
        tracing::warn!(
            topic = %record.id.topic, partition = record.id.partition,
            offset = record.id.offset, plugin, "dead-lettered: {reason}"
        );
        self.dead.push(DeadLetter {
            record: record.clone(),
            stage: Stage::Plugin,
            plugin: Some(plugin.to_string()),
            reason,
        });
    }

    /// Add another stage's outputs after these.
    pub(super) fn extend(&mut self, other: DerivedOutputs) {
        self.outputs.extend(other.outputs);
        self.dead.extend(other.dead);
        self.duplicates += other.duplicates;
    }
}

/// What the derived outputs' part of a commit wrote and refused.
#[derive(Default)]
pub(super) struct DerivedCommitted {
    /// Changes refused on the way, and outputs the sink could not take.
    pub(super) dead: Vec<DeadLetter>,
    /// How many of `dead` the sink refused (counted once committed).
    pub(super) sink_rejects: u64,
    pub(super) writes: u64,
    pub(super) duplicates: u64,
    /// The grouped write met a row error: the outputs went event by event.
    pub(super) row_by_row: bool,
}

impl DerivedCommitted {
    /// How many of `dead` `stage` refused.
    pub(super) fn refused_at(&self, stage: Stage) -> u64 {
        self.dead.iter().filter(|d| d.stage == stage).count() as u64
    }
}

/// Savepoint, rollback and release of the derived outputs' grouped writes
/// (a row error there falls back to writing them event by event).
const DERIVED_SAVEPOINT: [&str; 3] = [
    "SAVEPOINT sluice_derived",
    "ROLLBACK TO SAVEPOINT sluice_derived",
    "RELEASE SAVEPOINT sluice_derived",
];

/// Tables the derived outputs (and `also`: the output tables of
/// aggregations fed inside the transaction) write that the sink has
/// neither prepared nor refused (the attempt must be rolled back to make
/// them).
pub(super) fn unprepared<'a>(
    run: &'a DerivedOutputs,
    also: impl Iterator<Item = &'a SinkTable>,
    refused: &HashMap<SinkTable, String>,
    tables: &HashMap<String, ddl::TableState>,
) -> Vec<SinkTable> {
    let mut missing: Vec<SinkTable> = Vec::new();
    let written = run
        .outputs
        .iter()
        .flat_map(|o| &o.writes)
        .map(|w| &**w.table());
    for t in written.chain(also) {
        if !refused.contains_key(t) && !table_ready(tables, t) && !missing.contains(t) {
            missing.push(t.clone());
        }
    }
    missing
}

/// Write the derived outputs in the batch's transaction: grouped,
/// or event by event after a row error (an output the sink cannot take is
/// dead-lettered alone).
pub(super) async fn write_outputs(
    tx: &mut AnyConnection,
    d: Dialect,
    sql: &mut HashMap<Arc<SinkTable>, TableSql>,
    consolidate: bool,
    refused: &HashMap<SinkTable, String>,
    run: DerivedOutputs,
) -> anyhow::Result<DerivedCommitted> {
    let mut done = DerivedCommitted {
        dead: run.dead,
        duplicates: run.duplicates,
        ..DerivedCommitted::default()
    };
    let no_broken = HashMap::new();
    let mut outputs = Vec::with_capacity(run.outputs.len());
    for out in run.outputs {
        let why = out
            .writes
            .iter()
            .find_map(|w| refused.get(&**w.table()).cloned())
            .or_else(|| precheck(d, &out, &no_broken));
        match why {
            None => outputs.push(out),
            Some(reason) => {
                done.sink_rejects += 1;
                done.dead.push(sink_dead_letter(out, reason));
            }
        }
    }
    sqlx::query(DERIVED_SAVEPOINT[0]).execute(&mut *tx).await?;
    let writes = outputs
        .iter()
        .flat_map(|o| o.writes.iter().map(|w| (w, o.created)))
        .collect();
    match write_grouped(tx, d, sql, consolidate, writes).await {
        Ok(n) => {
            done.writes += n;
            sqlx::query(DERIVED_SAVEPOINT[2]).execute(&mut *tx).await?;
        }
        Err(e) if d.retry_event_by_event(&e) => {
            tracing::debug!(
                "a bulk write of derived rows failed ({e}); writing them event by event"
            );
            done.row_by_row = true;
            sqlx::query(DERIVED_SAVEPOINT[1]).execute(&mut *tx).await?;
            sqlx::query(DERIVED_SAVEPOINT[2]).execute(&mut *tx).await?;
            for out in outputs {
                match write_event(tx, d, sql, &out).await {
                    Ok(n) => done.writes += n,
                    Err(SinkError::Rejected(reason)) => {
                        done.sink_rejects += 1;
                        done.dead.push(sink_dead_letter(out, reason));
                    }
                    Err(SinkError::Database(e)) => {
                        return Err(anyhow::Error::new(e)
                            .context("writing the rows made in the transaction"))
                    }
                }
            }
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context("writing the rows made in the transaction"))
        }
    }
    Ok(done)
}

/// Whether a table the derived outputs write exists as declared (their
/// tables are only known inside the transaction, and DDL cannot run there).
pub(super) fn table_ready(tables: &HashMap<String, ddl::TableState>, t: &SinkTable) -> bool {
    tables.get(&t.name).is_some_and(|s| {
        let key: Vec<&str> = t
            .key
            .iter()
            .filter_map(|&k| t.columns.get(k as usize).map(|c| c.name.as_str()))
            .collect();
        s.key.iter().map(String::as_str).eq(key)
            && t.columns.iter().all(|c| s.columns.contains(&c.name))
    })
}
