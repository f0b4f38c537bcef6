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
    // A plain read: a number once given never changes, so the
    // transaction's snapshot (MySQL/MariaDB) is right whenever it has one.
    let found = find(conn, d, pipeline, operator, kind, false)
        .await
        .with_context(context)?;
    if found.is_some() || !create {
        return Ok(found);
    }
    // Only on a miss (once per name), so the sequence (PostgreSQL) or
    // counter (InnoDB) the insert draws from does not grow per commit.
    // Keyed plugins write state without the pipeline's turn, so two hosts
    // may add the same name at once: the second waits for the first and
    // keeps its number. Then a read of the latest commit (a snapshot taken
    // before the other host's commit would miss it).
    let insert = match d {
        Dialect::MySql { .. } => {
            "INSERT INTO sluice_state_ids (pipeline, operator, kind) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE sid = sid"
        }
        _ => {
            "INSERT INTO sluice_state_ids (pipeline, operator, kind) VALUES (?, ?, ?) \
             ON CONFLICT (pipeline, operator, kind) DO NOTHING"
        }
    };
    sqlx::query(&d.sql(insert))
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .execute(&mut *conn)
        .await
        .with_context(context)?;
    let id = find(conn, d, pipeline, operator, kind, true)
        .await
        .with_context(context)?
        .with_context(|| format!("no number for the state of {operator} after giving it one"))?;
    Ok(Some(id))
}

/// The number of (pipeline, operator, kind), if it has one; `latest`: by a
/// locking read on MySQL/MariaDB (the latest commit, not the snapshot).
async fn find(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
    latest: bool,
) -> Result<Option<i64>, sqlx::Error> {
    let lock = if latest && matches!(d, Dialect::MySql { .. }) {
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

/// The view by name over the numbered rows.
const VIEW: &str =
    "VIEW sluice_state AS SELECT i.pipeline, i.operator, i.kind, r.k, r.v, r.expires \
     FROM sluice_state_rows r JOIN sluice_state_ids i ON i.sid = r.sid";

/// Whether this schema has a relation named `name` of `kind` (a base
/// table or a view), looked up in this schema alone (PostgreSQL's
/// `search_path` may reach another sink's tables).
async fn has(
    conn: &mut AnyConnection,
    d: Dialect,
    name: &str,
    view: bool,
) -> Result<bool, sqlx::Error> {
    let sql = match d {
        Dialect::Postgres => format!(
            "SELECT 1 FROM pg_class c WHERE c.relname = '{name}' \
             AND c.relnamespace = current_schema()::regnamespace AND c.relkind IN ({})",
            if view { "'v'" } else { "'r', 'p'" }
        ),
        Dialect::MySql { .. } => format!(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name = '{name}' AND table_type = '{}'",
            if view { "VIEW" } else { "BASE TABLE" }
        ),
        Dialect::Sqlite => format!(
            "SELECT 1 FROM sqlite_master WHERE name = '{name}' AND type = '{}'",
            if view { "view" } else { "table" }
        ),
    };
    Ok(sqlx::query(&sql)
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

/// Copy a by-name state table `from` into the numbered tables.
async fn copy_from(conn: &mut AnyConnection, d: Dialect, from: &str) -> Result<u64, sqlx::Error> {
    // PostgreSQL: the old table's names may have the database's
    // collation, the new ones byte order; compare them in byte order.
    let c = if d == Dialect::Postgres {
        " COLLATE \"C\""
    } else {
        ""
    };
    let same =
        format!("i.pipeline = s.pipeline{c} AND i.operator = s.operator{c} AND i.kind = s.kind{c}");
    sqlx::query(&format!(
        "INSERT INTO sluice_state_ids (pipeline, operator, kind) \
         SELECT DISTINCT s.pipeline, s.operator, s.kind FROM {from} s \
         WHERE NOT EXISTS (SELECT 1 FROM sluice_state_ids i WHERE {same})"
    ))
    .execute(&mut *conn)
    .await?;
    let copied = sqlx::query(&format!(
        "INSERT INTO sluice_state_rows (sid, k, v, expires) \
         SELECT i.sid, s.k, s.v, s.expires FROM {from} s JOIN sluice_state_ids i ON {same}"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(copied.rows_affected())
}

/// Move a `sluice_state` table (state by name, from before the numbers)
/// into the numbered tables and put the view of that name in its place.
/// Run under the DDL lock, after the tables are made. One way: a host of an
/// earlier version cannot write to the view; its next commit fails and
/// rolls back, so what it had not committed is not lost (stop every host
/// before the upgrade).
pub(super) async fn migrate(conn: &mut AnyConnection, d: Dialect) -> Result<(), sqlx::Error> {
    if let Dialect::MySql { .. } = d {
        return migrate_mysql(conn, d).await;
    }
    // One transaction: the old table locked first (a commit of an old host
    // waits, then fails on the view), copied, dropped, the view made.
    // SQLite: IMMEDIATE takes the write lock first, so a second host
    // opening the file waits, then finds the view.
    let begin = if d == Dialect::Sqlite {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    let mut tx = conn.begin_with(begin).await?;
    if has(&mut tx, d, "sluice_state", false).await? {
        if d == Dialect::Postgres {
            sqlx::query("LOCK TABLE sluice_state IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        tracing::info!("moving the sluice_state table to numbered state rows (once)");
        let n = copy_from(&mut tx, d, "sluice_state").await?;
        sqlx::query("DROP TABLE sluice_state")
            .execute(&mut *tx)
            .await?;
        moved(n);
    }
    create_view(&mut tx, d).await?;
    tx.commit().await
}

/// MySQL/MariaDB commit DDL on their own: the old table is renamed first
/// (it waits for transactions using it; an old host's next commit then
/// fails), copied and emptied in one transaction, then dropped; a stop
/// anywhere resumes from the renamed table at the next start, copying
/// nothing twice.
async fn migrate_mysql(conn: &mut AnyConnection, d: Dialect) -> Result<(), sqlx::Error> {
    const MOVING: &str = "sluice_state_moving";
    if has(conn, d, "sluice_state", false).await? {
        tracing::info!("moving the sluice_state table to numbered state rows (once)");
        sqlx::query(&format!("RENAME TABLE sluice_state TO {MOVING}"))
            .execute(&mut *conn)
            .await?;
    }
    if has(conn, d, MOVING, false).await? {
        let mut tx = conn.begin().await?;
        let n = copy_from(&mut tx, d, MOVING).await?;
        sqlx::query(&format!("DELETE FROM {MOVING}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        sqlx::query(&format!("DROP TABLE {MOVING}"))
            .execute(&mut *conn)
            .await?;
        moved(n);
    }
    create_view(conn, d).await
}

/// The view `sluice_state`, unless there is one.
async fn create_view(conn: &mut AnyConnection, d: Dialect) -> Result<(), sqlx::Error> {
    if !has(conn, d, "sluice_state", true).await? {
        sqlx::query(&format!("CREATE {VIEW}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Say the move is done, with the rows it copied.
fn moved(rows: u64) {
    tracing::info!(
        rows,
        "operator state moved to sluice_state_rows; sluice_state is now a view of it"
    );
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
