//! `sluice_offsets` in the commit: claiming and locking the batch's
//! partitions, and the fence that drops what another host of the pipeline
//! already committed (invariant 1 in ARCHITECTURE.md).

use super::*;

/// The columns of `sluice_offsets`; the first three are its key.
pub(super) const OFFSET_COLUMNS: [&str; 5] = [
    "pipeline",
    "topic",
    "kafka_partition",
    "next_offset",
    "updated_at",
];

/// `INSERT INTO sluice_offsets` of `rows` rows (pipeline, topic, partition
/// and, if `update`, the next offset bound in that order), which on conflict
/// sets the bound offset (`update`) or leaves the row as it is (a new row
/// starts at 0).
pub(super) fn offsets_insert_sql(d: Dialect, now: &str, rows: usize, update: bool) -> String {
    let cols = OFFSET_COLUMNS.map(|c| d.quote(c));
    let offset = if update { "?" } else { "0" };
    let values = vec![format!("(?, ?, ?, {offset}, {now})"); rows];
    let set: &[String] = if update { &cols[3..] } else { &[] };
    d.sql(&format!(
        "INSERT INTO sluice_offsets ({}) VALUES {}{}",
        cols.join(", "),
        values.join(", "),
        d.upsert_clause(&cols[..3], set)
    ))
    .into_owned()
}

/// Lock this batch's partitions in `sluice_offsets` and read their committed
/// next offsets: two statements whatever the number of partitions. Rows a
/// partition does not have yet are created at 0 first, so there is a row to
/// lock. Locks are taken in (topic, partition) order, so two hosts cannot
/// deadlock, and held until COMMIT: a consumer that lost a partition in a
/// rebalance waits here for the new owner's batch, then sees its offset.
pub(super) async fn claim_offsets(
    conn: &mut AnyConnection,
    d: Dialect,
    meta: &MetaSql,
    pipeline: &str,
    offsets: &[(Arc<str>, i32, i64)],
) -> anyhow::Result<Vec<(Arc<str>, i32, i64)>> {
    let mut parts: Vec<(&Arc<str>, i32)> = offsets.iter().map(|(t, p, _)| (t, *p)).collect();
    parts.sort();
    parts.dedup();
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let claim = offsets_insert_sql(d, meta.now, parts.len(), false);
    let mut q = sqlx::query(&claim);
    for (topic, partition) in &parts {
        q = q.bind(pipeline).bind(&***topic).bind(*partition);
    }
    q.execute(&mut *conn)
        .await
        .context("claiming the batch's partitions in sluice_offsets")?;

    let which = vec!["(?, ?)"; parts.len()];
    let lock = d
        .sql(&format!(
            "SELECT topic, kafka_partition, next_offset FROM sluice_offsets
         WHERE pipeline = ? AND (topic, kafka_partition) IN ({}) ORDER BY topic, kafka_partition{}",
            which.join(", "),
            // SQLite: the claim's INSERT already holds the database's write lock.
            if d == Dialect::Sqlite {
                ""
            } else {
                " FOR UPDATE"
            }
        ))
        .into_owned();
    let mut q = sqlx::query(&lock).bind(pipeline);
    for (topic, partition) in &parts {
        q = q.bind(&***topic).bind(*partition);
    }
    let found = q
        .fetch_all(&mut *conn)
        .await
        .context("locking the batch's partitions in sluice_offsets")?;
    let mut stored = Vec::with_capacity(parts.len());
    for r in found {
        let (topic, partition, next): (String, i32, i64) =
            (text(&r, 0)?, r.try_get(1)?, r.try_get(2)?);
        if let Some((t, _)) = parts
            .iter()
            .find(|(t, p)| *p == partition && ***t == *topic)
        {
            stored.push(((*t).clone(), partition, next));
        }
    }
    Ok(stored)
}

/// Store the batch's next offsets (never behind what another consumer of
/// the partition committed); returns what was stored.
pub(super) async fn write_offsets(
    conn: &mut AnyConnection,
    d: Dialect,
    now: &str,
    pipeline: &str,
    offsets: &[(Arc<str>, i32, i64)],
    stored: &[(Arc<str>, i32, i64)],
) -> anyhow::Result<Vec<(Arc<str>, i32, i64)>> {
    let mut written = Vec::with_capacity(offsets.len());
    if offsets.is_empty() {
        return Ok(written);
    }
    let sql = offsets_insert_sql(d, now, offsets.len(), true);
    let mut q = sqlx::query(&sql);
    for (topic, partition, next) in offsets {
        // Never backwards: a consumer that lost the partition may be behind.
        let next = committed_next(stored, topic, *partition).map_or(*next, |s| s.max(*next));
        q = q.bind(pipeline).bind(&**topic).bind(*partition).bind(next);
        written.push((topic.clone(), *partition, next));
    }
    q.execute(&mut *conn)
        .await
        .context("writing sluice_offsets")?;
    Ok(written)
}

/// The committed next offset of a partition, from [`claim_offsets`].
pub(super) fn committed_next(
    stored: &[(Arc<str>, i32, i64)],
    topic: &str,
    partition: i32,
) -> Option<i64> {
    stored
        .iter()
        .find(|(t, p, _)| *p == partition && &**t == topic)
        .map(|(_, _, next)| *next)
}

/// Drop the records another consumer already committed; returns how many.
pub(super) fn drop_committed(
    stored: &[(Arc<str>, i32, i64)],
    events: &mut Vec<EventWrites>,
    dead: &mut Vec<DeadLetter>,
) -> u64 {
    let committed = |id: &RecordId| {
        committed_next(stored, &id.topic, id.partition).is_some_and(|next| id.offset < next)
    };
    let before = events.len() + dead.len();
    events.retain(|ev| !committed(&ev.record.id));
    dead.retain(|dl| !committed(&dl.record.id));
    let dropped = before - events.len() - dead.len();
    if dropped > 0 {
        tracing::info!(
            records = dropped,
            "dropped records another consumer of this pipeline already committed (partition moved in a rebalance)"
        );
    }
    dropped as u64
}
