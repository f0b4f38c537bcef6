//! PostgreSQL's bulk path: a table's consolidated upserts (or deletes) in
//! one statement that binds one array per column, `INSERT … SELECT * FROM
//! unnest($1::T1[], …) ON CONFLICT … DO UPDATE`. Each array goes as the text
//! of a PostgreSQL array literal, so the statement is the same whatever the
//! row count: parsed and planned once per table, the rows parsed by
//! PostgreSQL's array input at about COPY's speed, without the thousands of
//! parameters (and per-statement planning) multi-row `VALUES` cost.

use std::fmt::Write as _;

use super::rows::{bound, AnyQuery};
use super::state::stored_key;
use super::state_ids::{id_of, ids_of_kinds};
use super::*;
use crate::operators::aggregate::StateWrite;

/// Rows per bulk statement, at most: bounds one statement's memory on both sides.
pub(super) const BULK_ROWS: usize = 20_000;

/// `$1::T1[], $2::T2[], …`: one typed array parameter per column, if
/// PostgreSQL has a type for every column.
fn array_params(t: &SinkTable, cols: impl Iterator<Item = usize>) -> Option<String> {
    let params: Option<Vec<String>> = cols
        .enumerate()
        .map(|(n, i)| {
            let c = &t.columns[i];
            Dialect::Postgres
                .placeholder(n + 1, Some(c))
                .split_once("::")
                .map(|(p, ty)| format!("{p}::{ty}[]"))
        })
        .collect();
    Some(params?.join(", "))
}

/// `INSERT … SELECT * FROM unnest(…)` for `t`, if every column has a type:
/// for rows taken for new (`rows::write_upserts`).
pub(super) fn insert_sql(t: &SinkTable) -> Option<String> {
    let d = Dialect::Postgres;
    let arrays = array_params(t, 0..t.columns.len())?;
    let cols: Vec<String> = t.columns.iter().map(|c| d.quote(&c.name)).collect();
    Some(format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({arrays})",
        d.quote(&t.name),
        cols.join(", "),
    ))
}

/// `INSERT … SELECT * FROM unnest(…) ON CONFLICT …` for `t`, if every column has a type.
pub(super) fn upsert_sql(t: &SinkTable) -> Option<String> {
    let d = Dialect::Postgres;
    let cols: Vec<String> = t.columns.iter().map(|c| d.quote(&c.name)).collect();
    let key: Vec<String> = t.key.iter().map(|&k| cols[k as usize].clone()).collect();
    let non_key: Vec<String> = (0..cols.len())
        .filter(|i| !t.key.contains(&(*i as u32)))
        .map(|i| cols[i].clone())
        .collect();
    Some(insert_sql(t)? + &d.upsert_clause(&key, &non_key))
}

/// `DELETE … WHERE (key) IN (SELECT * FROM unnest(…))` for `t`.
pub(super) fn delete_sql(t: &SinkTable) -> Option<String> {
    let d = Dialect::Postgres;
    let key_cols = || t.key.iter().map(|&k| k as usize);
    let arrays = array_params(t, key_cols())?;
    let names: Vec<String> = key_cols().map(|i| d.quote(&t.columns[i].name)).collect();
    Some(format!(
        "DELETE FROM {} WHERE ({}) IN (SELECT * FROM unnest({arrays}))",
        d.quote(&t.name),
        names.join(", "),
    ))
}

/// Bind `rows` (all upserts or all deletes of one table, one per key) as
/// one array literal per bound column.
pub(super) fn bind_arrays<'q>(
    mut q: AnyQuery<'q>,
    t: &SinkTable,
    rows: &[&SinkWrite],
) -> AnyQuery<'q> {
    let width = rows.first().map_or(0, |w| bound(t, w).count());
    let mut arrays: Vec<String> = (0..width)
        .map(|_| {
            let mut s = String::with_capacity(rows.len() * 12 + 2);
            s.push('{');
            s
        })
        .collect();
    for (r, w) in rows.iter().enumerate() {
        for ((v, _), out) in bound(t, w).zip(arrays.iter_mut()) {
            if r > 0 {
                out.push(',');
            }
            push_element(out, v);
        }
    }
    for mut a in arrays {
        a.push('}');
        q = q.bind(a);
    }
    q
}

/// One array element in PostgreSQL's array literal syntax: NULL bare,
/// everything else quoted with `"` and `\` escaped, in the text form the
/// element type's input function reads.
fn push_element(out: &mut String, v: &Value) {
    let quoted = push_quoted;
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Boolean(b) => out.push_str(if *b { "t" } else { "f" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Decimal(s) => out.push_str(s),
        Value::Text(s) | Value::Json(s) => quoted(out, s),
        Value::Bytes(b) => push_bytea(out, b),
        Value::Timestamp(us) => quoted(out, &temporal::format_timestamp(*us)),
        Value::LocalTimestamp(us) => quoted(out, &temporal::format_local(*us)),
        Value::Date(days) => quoted(out, &temporal::format_date(*days)),
        Value::Time(us) => quoted(out, &temporal::format_time(*us)),
    }
}

/// A text element, quoted, `"` and `\\` escaped.
fn push_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// A `bytea` element: its hex form, quoted, the backslash escaped.
fn push_bytea(out: &mut String, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytea_len(b.len()));
    out.push_str("\"\\\\x");
    // Digits written a block at a time: one append per block, not per char.
    let mut digits = [0u8; 128];
    for block in b.chunks(digits.len() / 2) {
        for (byte, pair) in block.iter().zip(digits.chunks_exact_mut(2)) {
            pair[0] = HEX[(byte >> 4) as usize];
            pair[1] = HEX[(byte & 15) as usize];
        }
        let text = std::str::from_utf8(&digits[..block.len() * 2]);
        out.push_str(text.expect("hex digits are ASCII"));
    }
    out.push('"');
}

/// The length of a `bytea` element of `n` bytes (`push_bytea`).
fn bytea_len(n: usize) -> usize {
    n * 2 + 5
}

/// An array literal of one element per item, `size` characters each
/// about (state values run to kilobytes: sized up front, the literal is
/// not copied again and again as it grows).
fn array_of<T>(
    items: &[T],
    size: impl Fn(&T) -> usize,
    mut push: impl FnMut(&mut String, &T),
) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| size(i) + 1).sum::<usize>() + 2);
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push(&mut out, item);
    }
    out.push('}');
    out
}

/// A number per state write as an `int[]`/`bigint[]` literal, NULL for `None`.
fn int_array(chunk: &[&StateWrite], of: impl Fn(&StateWrite) -> Option<i64>) -> String {
    array_of(
        chunk,
        |_| 20,
        |out, w| match of(w) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("NULL"),
        },
    )
}

/// The rows' numbers (their kind's, from `ids`), NULL for a kind without one.
fn sid_array(chunk: &[&StateWrite], ids: &[(&'static str, Option<i64>)]) -> String {
    int_array(chunk, |w| id_of(ids, w.kind))
}

/// The rows' numbers (their kind's, from `ids`) and stored keys, as array
/// literals; a row of a kind without a number gets NULL (see `write_state`).
fn id_and_key_arrays(
    chunk: &[&StateWrite],
    ids: &[(&'static str, Option<i64>)],
) -> (String, String) {
    let sids = sid_array(chunk, ids);
    let keys = array_of(
        chunk,
        |w| bytea_len(w.key.len()),
        |out, w| push_bytea(out, &stored_key(&w.key)),
    );
    (sids, keys)
}

/// Byte strings end to end in one binary value, with each one's 1-based
/// start and length as `int[]` literals (for `substring(… FROM … FOR …)`).
#[derive(Default)]
struct Packed {
    bytes: Vec<u8>,
    starts: String,
    lengths: String,
}

impl Packed {
    fn push(&mut self, b: &[u8]) {
        for (list, n) in [
            (&mut self.starts, self.bytes.len() + 1),
            (&mut self.lengths, b.len()),
        ] {
            list.push(if list.is_empty() { '{' } else { ',' });
            let _ = write!(list, "{n}");
        }
        self.bytes.extend_from_slice(b);
    }

    fn finish(&mut self) {
        for list in [&mut self.starts, &mut self.lengths] {
            if list.is_empty() {
                list.push('{');
            }
            list.push('}');
        }
    }
}

/// A chunk of state upserts as `write_state` binds them.
struct PackedState {
    sids: String,
    keys: Packed,
    values: Packed,
    expires: String,
}

impl PackedState {
    fn of(chunk: &[&StateWrite], ids: &[(&'static str, Option<i64>)]) -> PackedState {
        let sids = sid_array(chunk, ids);
        let (mut keys, mut values) = (Packed::default(), Packed::default());
        for w in chunk {
            keys.push(&stored_key(&w.key));
            values.push(w.value.as_deref().unwrap_or_default());
        }
        keys.finish();
        values.finish();
        let expires = int_array(chunk, |w| w.expires);
        PackedState {
            sids,
            keys,
            values,
            expires,
        }
    }
}

/// `INSERT` of packed state rows (see `PackedState`); `write_state` adds
/// `ON CONFLICT` for rows the sink may hold.
const INSERT_STATE: &str = "INSERT INTO sluice_state_rows (sid, k, v, expires) \
     SELECT u.sid, substring($2::bytea FROM u.ks FOR u.kl), \
       substring($5::bytea FROM u.vs FOR u.vl), u.expires \
     FROM unnest($1::bigint[], $3::int[], $4::int[], $6::int[], $7::int[], $8::bigint[]) \
       AS u(sid, ks, kl, vs, vl, expires)";

/// Operator state rows written in at most three statements (inserts of rows
/// the sink does not hold, upserts, deletes), whatever their number. A key
/// written twice keeps its last value.
pub(super) async fn write_state(
    conn: &mut AnyConnection,
    pipeline: &str,
    operator: &str,
    writes: &[StateWrite],
) -> anyhow::Result<()> {
    // Every kind with an upsert has a number; a NULL one (deletes of a
    // kind never written) matches no row.
    let ids = ids_of_kinds(conn, Dialect::Postgres, pipeline, operator, writes).await?;
    let mut last: HashMap<(&str, &[u8]), usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(writes.len(), Default::default());
    for (i, w) in writes.iter().filter(|w| w.value.is_some()).enumerate() {
        last.insert((w.kind, &w.key), i);
    }
    let (inserts, upserts): (Vec<&StateWrite>, Vec<&StateWrite>) = writes
        .iter()
        .filter(|w| w.value.is_some())
        .enumerate()
        .filter(|(i, w)| last.get(&(w.kind, &w.key[..])) == Some(i))
        .map(|(_, w)| w)
        .partition(|w| w.fresh);
    let deletes: Vec<&StateWrite> = writes.iter().filter(|w| w.value.is_none()).collect();
    // Rows the operator knows are new skip ON CONFLICT's speculative
    // insertion (measured: 140,000 new rows in 0.38 s instead of 0.72 s).
    let upsert = format!(
        "{INSERT_STATE} ON CONFLICT (sid, k) DO UPDATE SET v = excluded.v, expires = excluded.expires"
    );
    for (rows, sql) in [(&inserts, INSERT_STATE), (&upserts, upsert.as_str())] {
        for chunk in rows.chunks(BULK_ROWS) {
            let p = PackedState::of(chunk, &ids);
            // Keys and values each go as one binary `bytea` (no hex to
            // write or parse), cut into rows by offset and length:
            // PostgreSQL spent a fifth of `orders_events_5m`'s state writes
            // parsing them as `bytea[]` array literals.
            let done = sqlx::query(sql)
                .bind(p.sids)
                .bind(p.keys.bytes)
                .bind(p.keys.starts)
                .bind(p.keys.lengths)
                .bind(p.values.bytes)
                .bind(p.values.starts)
                .bind(p.values.lengths)
                .bind(p.expires)
                .execute(&mut *conn)
                .await;
            match done {
                Err(e) if Dialect::is_unique_violation(&e) => {
                    return Err(super::state::CacheDisagrees(operator.to_string()).into())
                }
                other => other?,
            };
        }
    }
    for chunk in deletes.chunks(BULK_ROWS) {
        let (sids, keys) = id_and_key_arrays(chunk, &ids);
        // By row address, from one key lookup per row (see `read_state`).
        sqlx::query(
            "DELETE FROM sluice_state_rows WHERE ctid = ANY(ARRAY( \
               SELECT s.ctid FROM unnest($1::bigint[], $2::bytea[]) AS u(sid, k) \
               CROSS JOIN LATERAL (SELECT ctid FROM sluice_state_rows WHERE sid = u.sid \
                 AND k = u.k OFFSET 0) AS s))",
        )
        .bind(sids)
        .bind(keys)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// State rows of one kind by stored key, in one statement per `BULK_ROWS`
/// keys: one index lookup per key, whatever the planner believes. (Written
/// as `k = ANY($4)`, a plan made while the table still looked empty checks
/// the array as a filter over every row of the operator: 34 s for 5000
/// keys over 140k rows, measured.)
pub(super) async fn read_state(
    conn: &mut AnyConnection,
    pipeline: &str,
    operator: &str,
    kind: &str,
    stored: &[Vec<u8>],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut rows = Vec::new();
    for chunk in stored.chunks(BULK_ROWS) {
        let keys = array_of(chunk, |k| bytea_len(k.len()), |out, k| push_bytea(out, k));
        rows.extend(
            sqlx::query(
                "SELECT s.k, s.v FROM unnest($4::bytea[]) AS u(k) \
                 CROSS JOIN LATERAL (SELECT k, v FROM sluice_state_rows WHERE sid = \
                   (SELECT sid FROM sluice_state_ids WHERE pipeline = $1 AND operator = $2 AND kind = $3) \
                   AND k = u.k OFFSET 0) AS s",
            )
            .bind(pipeline)
            .bind(operator)
            .bind(kind)
            .bind(keys)
            .fetch_all(&mut *conn)
            .await?,
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bytea_element_is_its_bytes_in_hex_whatever_its_length() {
        for n in [0usize, 1, 63, 64, 65, 128, 200] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut out = String::from("x");
            push_bytea(&mut out, &bytes);
            assert_eq!(out, format!("x\"\\\\x{hex}\""), "{n} bytes");
            assert_eq!(out.len() - 1, bytea_len(n));
        }
    }

    #[test]
    fn packed_byte_strings_are_cut_back_by_start_and_length() {
        let items: &[&[u8]] = &[b"ab", b"", b"xyz"];
        let mut p = Packed::default();
        for b in items {
            p.push(b);
        }
        p.finish();
        assert_eq!(p.bytes, b"abxyz");
        assert_eq!(
            (p.starts.as_str(), p.lengths.as_str()),
            ("{1,3,3}", "{2,0,3}")
        );
        // as PostgreSQL's substring(bytes FROM start FOR length) reads them
        let starts: Vec<usize> = p.starts[1..p.starts.len() - 1]
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect();
        let lengths: Vec<usize> = p.lengths[1..p.lengths.len() - 1]
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect();
        for ((s, l), want) in starts.iter().zip(&lengths).zip(items) {
            assert_eq!(&p.bytes[s - 1..s - 1 + l], *want);
        }
        let mut none = Packed::default();
        none.finish();
        assert_eq!((none.starts.as_str(), none.lengths.as_str()), ("{}", "{}"));
    }

    #[test]
    fn an_array_literal_separates_its_elements() {
        let items: &[&[u8]] = &[b"\x01", b"", b"\xff\x10"];
        let text = array_of(items, |b| bytea_len(b.len()), |out, b| push_bytea(out, b));
        assert_eq!(text, r#"{"\\x01","\\x","\\xff10"}"#);
    }
}
