//! A join's state in `sluice_state`, read and written in the batch's
//! transaction (what the operator does lives in `operators::join`).
//!
//! Per side:
//! - the source rows: a regular join reads the pipeline's stored tables
//!   (`tables.rs`, shared with every other join and lookup of the table,
//!   written by the commit's table pass); an interval join, whose rows
//!   expire, keeps its own (`jl`/`jr`, keyed by the row's key: its last
//!   position and image; a deleted row keeps its position, so
//!   re-deliveries are known);
//! - each live row's entry in the join's join-key index (`il`/`ir`, keyed
//!   by 16 bytes of SHA-256 of the join key, then 16 of the row key; the
//!   value is the row key). Every row of a join key is one range read,
//!   whatever the key's length, and the entry is only rewritten when the
//!   join key changes.
//!
//! The state lives in the sink, not with the partitions that feed it: two
//! topics keyed differently (orders by order id, customers by customer id)
//! meet here whichever host reads them, and stateful commits of a pipeline
//! take turns (`sluice_state_seq`), so several hosts see one state.

use sha2::Digest as _;

use super::state::{blob, key_value, read_expired, read_state, write_state};
use super::tables::StoredTables;
use super::*;
use crate::operators::aggregate::StateWrite;
use crate::operators::codec::CorruptState;
use crate::operators::join::spec::JoinSpec;
use crate::operators::join::{JoinInput, JoinState, JoinWrite, Side, SideRow};

/// State kinds of a join's rows and index entries.
pub mod kind {
    pub const LEFT_ROW: &str = "jl";
    pub const RIGHT_ROW: &str = "jr";
    pub const LEFT_INDEX: &str = "il";
    pub const RIGHT_INDEX: &str = "ir";
}

fn row_kind(side: Side) -> &'static str {
    match side {
        Side::Left => kind::LEFT_ROW,
        Side::Right => kind::RIGHT_ROW,
    }
}

fn index_kind(side: Side) -> &'static str {
    match side {
        Side::Left => kind::LEFT_INDEX,
        Side::Right => kind::RIGHT_INDEX,
    }
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    let full = sha2::Sha256::digest(bytes);
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// An index entry's key: the join key's digest, then the row key's.
fn index_key(join_key: &[u8], row_key: &[u8]) -> Vec<u8> {
    let mut k = digest(join_key).to_vec();
    k.extend_from_slice(&digest(row_key));
    k
}

/// Range reads per statement.
const RANGES: usize = 100;

/// The row keys indexed under each join key digest, for one side.
async fn read_index(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    side: Side,
    join_keys: &[Vec<u8>],
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for chunk in join_keys.chunks(RANGES) {
        let ranges = vec!["k BETWEEN ? AND ?"; chunk.len()].join(" OR ");
        let sql = d
            .sql(&format!(
                "SELECT {} FROM sluice_state_rows WHERE {} AND ({ranges})",
                key_value(d),
                super::state_ids::BY_NAME
            ))
            .into_owned();
        let mut q = sqlx::query(&sql)
            .bind(pipeline)
            .bind(operator)
            .bind(index_kind(side));
        for jk in chunk {
            let prefix = digest(jk);
            let (mut low, mut high) = (prefix.to_vec(), prefix.to_vec());
            low.extend_from_slice(&[0x00; 16]);
            high.extend_from_slice(&[0xff; 16]);
            q = q.bind(low).bind(high);
        }
        for row in q
            .fetch_all(&mut *conn)
            .await
            .with_context(|| format!("reading the join index of {operator}"))?
        {
            out.push((blob(d, &row, 0)?, blob(d, &row, 1)?));
        }
    }
    Ok(out)
}

/// A row key and its stored row (`None`: not stored).
type LoadedRow = (Vec<u8>, Option<SideRow>);

fn decode_rows(rows: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<Vec<LoadedRow>, CorruptState> {
    rows.into_iter()
        .map(|(k, v)| Ok((k, v.map(|b| SideRow::decode(&b)).transpose()?)))
        .collect()
}

/// Where a join's side rows are: the stored tables (regular joins, seen
/// through the join's spec), or the join's own state (interval joins).
pub(super) enum SideRows<'a> {
    Stored(&'a mut StoredTables, &'a JoinSpec),
    Own,
}

impl SideRows<'_> {
    /// The rows with these keys (`None`: not stored).
    async fn read(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        operator: &str,
        side: Side,
        keys: &[Vec<u8>],
    ) -> anyhow::Result<Vec<LoadedRow>> {
        let context = || format!("reading the state of join {operator}");
        match self {
            SideRows::Own => {
                let rows = read_state(conn, d, pipeline, operator, row_kind(side), keys).await?;
                Ok(decode_rows(rows).with_context(context)?)
            }
            SideRows::Stored(tables, spec) => {
                tables.load_rows(conn, d, pipeline, keys.iter()).await?;
                let store = tables.write_store()?;
                Ok(keys
                    .iter()
                    .map(|k| {
                        let row = store.row(k).map(|r| spec.side_row(side, r));
                        (k.clone(), row)
                    })
                    .collect())
            }
        }
    }
}

/// Load what `inputs` need into `state`: the rows they change, then every
/// row of both sides under the join keys those rows had and get.
pub(super) async fn load(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    state: &mut JoinState,
    inputs: &[&JoinInput],
    mut rows: SideRows<'_>,
) -> anyhow::Result<()> {
    for side in [Side::Left, Side::Right] {
        let missing = state.missing_rows(side, inputs.iter().copied());
        let read = rows
            .read(conn, d, pipeline, operator, side, &missing)
            .await?;
        state.load_rows(side, read);
    }
    let keys = state.missing_keys(inputs.iter().copied());
    if keys.is_empty() {
        return Ok(());
    }
    // Per join key digest: the key, and each side's rows under it.
    type Under = (Vec<u8>, [Vec<(Vec<u8>, SideRow)>; 2]);
    let mut under: HashMap<[u8; 16], Under> = keys
        .iter()
        .map(|k| (digest(k), (k.clone(), [Vec::new(), Vec::new()])))
        .collect();
    for (i, side) in [Side::Left, Side::Right].into_iter().enumerate() {
        let entries = read_index(conn, d, pipeline, operator, side, &keys).await?;
        let row_keys: Vec<Vec<u8>> = entries.iter().map(|(_, v)| v.clone()).collect();
        let read = rows
            .read(conn, d, pipeline, operator, side, &row_keys)
            .await?;
        for ((entry, _), (row_key, row)) in entries.iter().zip(read) {
            let Some(row) = row else {
                anyhow::bail!(
                    "join {operator}: an index entry names a row that is not stored (state from a Sluice before stored tables, which kept a regular join's rows per join, must be rebuilt: clear the pipeline's state and offsets)"
                );
            };
            let prefix: [u8; 16] =
                entry
                    .get(..16)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("join {operator}: an index key is shorter than a digest")
                    })?;
            if let Some((_, sides)) = under.get_mut(&prefix) {
                sides[i].push((row_key, row));
            }
        }
    }
    for (_, (key, [left, right])) in under {
        // An entry whose digest matches but whose row has another key (a
        // digest collision) is not loaded under this key.
        let keep = |rows: Vec<(Vec<u8>, SideRow)>| -> Vec<(Vec<u8>, SideRow)> {
            rows.into_iter()
                .filter(|(_, r)| r.live.as_ref().and_then(|l| l.on.as_ref()) == Some(&key))
                .collect()
        };
        state.load_key(key.clone(), keep(left), keep(right));
    }
    Ok(())
}

/// Interval joins: delete the side rows no partner can reach any more
/// (expiring before `watermark`) and their index entries, and drop them
/// from `state`. Their joined rows stay: expiry is not a retraction.
pub(super) async fn expire(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    state: &mut JoinState,
    watermark: i64,
) -> anyhow::Result<()> {
    for side in [Side::Left, Side::Right] {
        let expired = read_expired(
            conn,
            d,
            pipeline,
            operator,
            row_kind(side),
            watermark.saturating_sub(1),
        )
        .await?;
        let mut writes = Vec::with_capacity(expired.len() * 2);
        for (k, v) in expired {
            let row = SideRow::decode(&v)
                .with_context(|| format!("reading the state of join {operator}"))?;
            if let Some(on) = row.live.and_then(|l| l.on) {
                writes.push(StateWrite {
                    kind: index_kind(side),
                    key: index_key(&on, &k),
                    value: None,
                    expires: None,
                    fresh: false,
                });
            }
            state.forget(side, &k);
            writes.push(StateWrite {
                kind: row_kind(side),
                key: k,
                value: None,
                expires: None,
                fresh: false,
            });
        }
        write_state(conn, d, pipeline, operator, &writes).await?;
    }
    Ok(())
}

/// Move the index entries of the rows a batch changed, and write the rows
/// themselves when the join keeps its own (`own_rows`: interval joins).
pub(super) async fn write(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    writes: &[JoinWrite],
    own_rows: bool,
) -> anyhow::Result<()> {
    let mut state = Vec::with_capacity(writes.len() * 2);
    for w in writes {
        if own_rows {
            state.push(StateWrite {
                kind: row_kind(w.side),
                key: w.row_key.clone(),
                value: Some(w.row.encode()),
                expires: w.expires,
                fresh: false,
            });
        }
        let new_on = w.row.live.as_ref().and_then(|l| l.on.as_ref());
        if w.old_on.as_ref() == new_on {
            continue;
        }
        if let Some(old) = &w.old_on {
            state.push(StateWrite {
                kind: index_kind(w.side),
                key: index_key(old, &w.row_key),
                value: None,
                expires: None,
                fresh: false,
            });
        }
        if let Some(new) = new_on {
            state.push(StateWrite {
                kind: index_kind(w.side),
                key: index_key(new, &w.row_key),
                value: Some(w.row_key.clone()),
                expires: None,
                fresh: false,
            });
        }
    }
    write_state(conn, d, pipeline, operator, &state).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{SourceOrder, Value};
    use crate::operators::codec;
    use crate::operators::join::{JoinChange, JoinKind};

    type Joined = BTreeSet<(i64, Option<i64>, i64, Option<i64>)>;
    type RowId = (Vec<u8>, Option<Vec<u8>>);
    type JoinedRow = (Vec<Value>, Option<Vec<Value>>);

    fn n(v: &Value) -> i64 {
        match v {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        }
    }

    /// The join of the tables as they are now, computed from a plain model
    /// of them ((side, id) → (join value, value)), not from the operator.
    fn reference(tables: &HashMap<(usize, i64), (Option<i64>, i64)>, kind: JoinKind) -> Joined {
        let mut out = BTreeSet::new();
        for (&(s, id), &(on, v)) in tables {
            if s != 0 {
                continue;
            }
            let ms: Vec<(i64, i64)> = tables
                .iter()
                .filter(|(&(rs, _), &(ron, _))| rs == 1 && on.is_some() && ron == on)
                .map(|(&(_, rid), &(_, rv))| (rid, rv))
                .collect();
            if ms.is_empty() && kind == JoinKind::Left {
                out.insert((id, None, v, None));
            }
            for (rid, rv) in ms {
                out.insert((id, Some(rid), v, Some(rv)));
            }
        }
        out
    }

    /// Random churn on both sides in SQLite, the state read back from the
    /// database for every batch (nothing cached), long join keys among the
    /// short ones: the result kept from the deltas equals the join of the
    /// tables after every batch, and re-sending a batch changes nothing.
    #[tokio::test]
    async fn join_state_read_back_from_sqlite_keeps_the_result_exact() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("s.db").display());
        let mut sink = SqlSink::open(&url, "test", "p").await.unwrap();
        let d = sink.dialect;
        for (op, kind) in [("inner", JoinKind::Inner), ("left", JoinKind::Left)] {
            let mut seed: u64 = 42;
            let mut next = |m: u64| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) % m
            };
            let mut tables: HashMap<(usize, i64), (Option<i64>, i64)> = HashMap::new();
            let mut result: HashMap<RowId, JoinedRow> = HashMap::new();
            let mut pos = 0;
            for round in 0..150 {
                let mut batch = Vec::new();
                for _ in 0..1 + next(8) {
                    pos += 1;
                    let s = next(2) as usize;
                    let id = next(10) as i64;
                    let side = if s == 0 { Side::Left } else { Side::Right };
                    let on = (next(5) > 0).then(|| next(4) as i64);
                    let value = next(100) as i64;
                    let delete = next(5) == 0;
                    // long join values now and then: index keys stay fixed-size
                    let on_value = |o: i64| {
                        if o == 3 {
                            Value::Text("x".repeat(3000))
                        } else {
                            Value::Int(o)
                        }
                    };
                    batch.push(JoinInput {
                        side,
                        row_key: codec::key(&[Value::Int(s as i64), Value::Int(id)]),
                        order: Some(SourceOrder([pos, 0, 0])),
                        change: if delete {
                            JoinChange::Delete
                        } else {
                            JoinChange::Row {
                                on: vec![on.map(on_value).unwrap_or(Value::Null)],
                                values: vec![Value::Int(id), Value::Int(value)],
                                time: None,
                            }
                        },
                    });
                    if delete {
                        tables.remove(&(s, id));
                    } else {
                        tables.insert((s, id), (on, value));
                    }
                }
                for attempt in 0..2 {
                    let mut state = JoinState::new(kind);
                    let refs: Vec<&JoinInput> = batch.iter().collect();
                    load(&mut sink.conn, d, "p", op, &mut state, &refs, SideRows::Own)
                        .await
                        .unwrap();
                    let applied = state.apply(&refs).unwrap();
                    if attempt == 1 {
                        assert_eq!(
                            applied.deltas.len(),
                            0,
                            "a re-sent batch changed the result"
                        );
                        assert_eq!(applied.duplicates, batch.len() as u64);
                        continue;
                    }
                    write(&mut sink.conn, d, "p", op, &applied.writes, true)
                        .await
                        .unwrap();
                    for delta in applied.deltas {
                        let id = (delta.left_key, delta.right_key);
                        if delta.weight > 0 {
                            assert!(result.insert(id, (delta.left, delta.right)).is_none());
                        } else {
                            assert!(result.remove(&id).is_some(), "retracted a row never added");
                        }
                    }
                }
                let kept: Joined = result
                    .values()
                    .map(|(l, r)| {
                        (
                            n(&l[0]),
                            r.as_ref().map(|r| n(&r[0])),
                            n(&l[1]),
                            r.as_ref().map(|r| n(&r[1])),
                        )
                    })
                    .collect();
                assert_eq!(kept, reference(&tables, kind), "{op} join, round {round}");
            }
        }
    }
}
