//! One creator at a time for Sluice's DDL in a sink database. Several hosts
//! of a pipeline often start at the same moment on a fresh database, and
//! PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent
//! creator (both pass the check, the loser fails on the type catalogue's
//! unique index). The DDL therefore runs under a database-wide lock that
//! lives in the session, so a host that dies while holding it releases it:
//! PostgreSQL's `pg_advisory_lock`, MySQL/MariaDB's `GET_LOCK`. SQLite needs
//! none: it serialises writers on the file, and DDL is a write.

use std::time::Duration;

use sqlx::AnyConnection;

use super::dialect::Dialect;

/// The advisory lock key in PostgreSQL (`sluice` + 1 in ASCII); advisory
/// locks are scoped to the current database.
const PG_KEY: i64 = 0x736c_7569_6365_0001;

/// How long a host waits for another host's DDL before giving up.
const WAIT: Duration = Duration::from_secs(60);

/// Another host held the lock for all of [`WAIT`]: the sink's own trouble.
fn timed_out(what: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Run `statements` in order under the DDL lock (taken and given back here,
/// also when a statement fails).
pub async fn locked_ddl(
    conn: &mut AnyConnection,
    dialect: Dialect,
    statements: &[&str],
) -> Result<(), sqlx::Error> {
    locked_ddl_then(conn, dialect, statements, async |_| Ok(())).await
}

/// Run `statements` in order, then `then` (DDL that depends on what is
/// there, such as a migration), under the DDL lock.
pub async fn locked_ddl_then(
    conn: &mut AnyConnection,
    dialect: Dialect,
    statements: &[&str],
    then: impl AsyncFnOnce(&mut AnyConnection) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    acquire(conn, dialect).await?;
    let mut result = Ok(());
    for s in statements {
        result = sqlx::query(s).execute(&mut *conn).await.map(drop);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = then(&mut *conn).await;
    }
    let released = release(conn, dialect).await;
    result.and(released)
}

/// Take the DDL lock for this session; pair with [`release`].
async fn acquire(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    match dialect {
        Dialect::Sqlite => Ok(()),
        Dialect::Postgres => {
            let sql = format!("SET lock_timeout = '{}s'", WAIT.as_secs());
            sqlx::query(&sql).execute(&mut *conn).await?;
            let taken = sqlx::query(&format!("SELECT pg_advisory_lock({PG_KEY})"))
                .execute(&mut *conn)
                .await;
            sqlx::query("SET lock_timeout = 0")
                .execute(&mut *conn)
                .await?;
            match taken {
                Ok(_) => Ok(()),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                    Err(timed_out(format!(
                        "waited {WAIT:?} for another host's DDL in this database (advisory lock {PG_KEY})"
                    )))
                }
                Err(e) => Err(e),
            }
        }
        Dialect::MySql { .. } => {
            // 1: taken; 0: timed out; NULL: an error.
            let got: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT CAST(GET_LOCK(CONCAT('sluice_ddl.', DATABASE()), {}) AS SIGNED)",
                WAIT.as_secs()
            ))
            .fetch_one(&mut *conn)
            .await?;
            match got {
                Some(1) => Ok(()),
                _ => Err(timed_out(format!(
                    "waited {WAIT:?} for another host's DDL in this database (GET_LOCK('sluice_ddl.<database>') gave {got:?})"
                ))),
            }
        }
    }
}

/// Give the DDL lock back.
async fn release(conn: &mut AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    let sql = match dialect {
        Dialect::Sqlite => return Ok(()),
        Dialect::Postgres => format!("SELECT pg_advisory_unlock({PG_KEY})"),
        Dialect::MySql { .. } => {
            "SELECT RELEASE_LOCK(CONCAT('sluice_ddl.', DATABASE()))".to_string()
        }
    };
    sqlx::query(&sql).execute(conn).await.map(drop)
}
