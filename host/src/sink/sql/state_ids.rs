//! Operator state is stored by number: `sluice_state_rows (sid, k, v,
//! expires)`, one `sid` per (pipeline, operator, kind) in
//! `sluice_state_ids`. Every state read and write walks the rows' key
//! index, and names in it made each entry ~100 bytes and each comparison
//! four columns (see the DDL in `dialect.rs`). The view `sluice_state`
//! shows the rows by name, as the table of that name did before; a sink
//! that still has that table is moved over once, at start (`migrate`).

use anyhow::Context as _;
use sqlx::{AnyConnection, Connection as _};

use super::Dialect;
use crate::operators::aggregate::StateWrite;

/// The condition selecting one (pipeline, operator, kind)'s rows in
/// `sluice_state_rows`; binds pipeline, operator, kind. A name with no
/// number yet selects nothing.
pub(super) const BY_NAME: &str =
    "sid = (SELECT sid FROM sluice_state_ids WHERE pipeline = ? AND operator = ? AND kind = ?)";

/// The number of (pipeline, operator, kind), given one first if `create`
/// (in the caller's transaction: a rollback takes it back, and the next
/// attempt gives it again). `None`: none yet and not `create`.
pub(super) async fn state_id(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
    create: bool,
) -> anyhow::Result<Option<i64>> {
    let context = || format!("numbering the state of {operator} (kind {kind})");
    let found = find(conn, d, pipeline, operator, kind)
        .await
        .with_context(context)?;
    if found.is_some() || !create {
        return Ok(found);
    }
    // Not `ON CONFLICT DO NOTHING`: that draws a number from the sequence
    // (PostgreSQL) or the counter (InnoDB) every time, and numbers would
    // grow by one each commit. Hosts of a pipeline take turns at state, so
    // none adds the same name beside this one.
    let dual = if matches!(d, Dialect::MySql { .. }) {
        " FROM DUAL"
    } else {
        ""
    };
    let insert = d.sql(&format!(
        "INSERT INTO sluice_state_ids (pipeline, operator, kind) SELECT ?, ?, ?{dual} \
         WHERE NOT EXISTS (SELECT 1 FROM sluice_state_ids WHERE pipeline = ? AND operator = ? AND kind = ?)"
    ))
    .into_owned();
    sqlx::query(&insert)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .execute(&mut *conn)
        .await
        .with_context(context)?;
    let id = find(conn, d, pipeline, operator, kind)
        .await
        .with_context(context)?
        .with_context(|| format!("no number for the state of {operator} after giving it one"))?;
    Ok(Some(id))
}

/// The number of (pipeline, operator, kind), if it has one.
async fn find(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
) -> Result<Option<i64>, sqlx::Error> {
    // A locking read on MySQL/MariaDB: the latest commit, not the
    // transaction's snapshot, which may predate another host's first state
    // of this operator (its `INSERT … WHERE NOT EXISTS` sees that commit).
    let lock = if matches!(d, Dialect::MySql { .. }) {
        " LOCK IN SHARE MODE"
    } else {
        ""
    };
    let select = d
        .sql(&format!(
            "SELECT sid FROM sluice_state_ids WHERE pipeline = ? AND operator = ? AND kind = ?{lock}"
        ))
        .into_owned();
    sqlx::query_scalar(&select)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .fetch_optional(&mut *conn)
        .await
}

/// Move a `sluice_state` table (state by name, before the numbers) into
/// `sluice_state_ids` and `sluice_state_rows`, then put the view of that
/// name in its place. Run under the DDL lock, after the tables are made.
/// The copy and the old table's emptying commit together, so a stop before
/// the table is dropped (MariaDB commits DDL on its own) copies nothing twice.
pub(super) async fn migrate(conn: &mut AnyConnection, d: Dialect) -> Result<(), sqlx::Error> {
    let old_table = match d {
        Dialect::Postgres => {
            "SELECT 1 FROM pg_class WHERE oid = to_regclass('sluice_state') AND relkind IN ('r', 'p')"
        }
        Dialect::MySql { .. } => {
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name = 'sluice_state' AND table_type = 'BASE TABLE'"
        }
        Dialect::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_state'",
    };
    if sqlx::query(old_table)
        .fetch_optional(&mut *conn)
        .await?
        .is_some()
    {
        tracing::info!("moving the sluice_state table to numbered state rows (once)");
        // PostgreSQL: the old table's names may have the database's
        // collation, the new ones byte order; compare them in byte order.
        let c = if d == Dialect::Postgres {
            " COLLATE \"C\""
        } else {
            ""
        };
        let same = format!(
            "i.pipeline = s.pipeline{c} AND i.operator = s.operator{c} AND i.kind = s.kind{c}"
        );
        let mut tx = conn.begin().await?;
        for s in [
            format!(
                "INSERT INTO sluice_state_ids (pipeline, operator, kind) \
                 SELECT DISTINCT s.pipeline, s.operator, s.kind FROM sluice_state s \
                 WHERE NOT EXISTS (SELECT 1 FROM sluice_state_ids i WHERE {same})"
            ),
            format!(
                "INSERT INTO sluice_state_rows (sid, k, v, expires) \
                 SELECT i.sid, s.k, s.v, s.expires FROM sluice_state s JOIN sluice_state_ids i ON {same}"
            ),
            "DELETE FROM sluice_state".to_string(),
        ] {
            sqlx::query(&s).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        sqlx::query("DROP TABLE sluice_state")
            .execute(&mut *conn)
            .await?;
        tracing::info!("operator state moved to sluice_state_rows (by number); sluice_state is now a view of it");
    }
    const VIEW: &str =
        "VIEW sluice_state AS SELECT i.pipeline, i.operator, i.kind, r.k, r.v, r.expires \
         FROM sluice_state_rows r JOIN sluice_state_ids i ON i.sid = r.sid";
    match d {
        Dialect::Postgres => {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT CAST(to_regclass('sluice_state') AS TEXT)")
                    .fetch_one(&mut *conn)
                    .await?;
            if exists.is_none() {
                sqlx::query(&format!("CREATE {VIEW}"))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        _ => {
            sqlx::query(&format!(
                "CREATE {}",
                VIEW.replacen("VIEW", "VIEW IF NOT EXISTS", 1)
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The number of each kind `writes` touch (given one if the kind has an
/// upsert; `None`: deletes only, of rows never written).
pub(super) async fn ids_of_kinds(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    writes: &[StateWrite],
) -> anyhow::Result<Vec<(&'static str, Option<i64>)>> {
    let mut kinds: Vec<(&'static str, bool)> = Vec::new();
    for w in writes {
        match kinds.iter_mut().find(|(k, _)| *k == w.kind) {
            Some((_, upsert)) => *upsert |= w.value.is_some(),
            None => kinds.push((w.kind, w.value.is_some())),
        }
    }
    let mut ids = Vec::with_capacity(kinds.len());
    for (kind, upsert) in kinds {
        ids.push((
            kind,
            state_id(conn, d, pipeline, operator, kind, upsert).await?,
        ));
    }
    Ok(ids)
}

/// The number `ids` gives `kind`.
pub(super) fn id_of(ids: &[(&'static str, Option<i64>)], kind: &str) -> Option<i64> {
    ids.iter().find(|(k, _)| *k == kind).and_then(|(_, id)| *id)
}
