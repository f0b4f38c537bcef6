//! What differs between the SQL databases Sluice writes to: identifier
//! quoting, placeholders, column types, the upsert clause, the bookkeeping
//! tables' DDL and which errors concern one row's data. The commit routine
//! (`sink::sql`) is shared; everything database-specific lives here.

use std::borrow::Cow;

use crate::model::{Column, ColumnType, Value};

/// The SQL database behind a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    /// MySQL or MariaDB; `collation` is the server's binary, no-pad utf8mb4
    /// collation, so text keys compare exactly as in the source.
    MySql {
        collation: &'static str,
    },
}

/// SQLite's default limit on bound parameters is 32766; PostgreSQL and MySQL
/// allow 65535. Statements stay well under all three.
const MAX_PARAMS: usize = 30_000;

/// Rows per multi-row statement, at most (a power of two).
pub const MAX_ROWS: usize = 256;

impl Dialect {
    /// Name used in logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql { .. } => "MySQL/MariaDB",
        }
    }

    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql { .. } => format!("`{}`", ident.replace('`', "``")),
            _ => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// Longest identifier the database keeps whole (PostgreSQL silently
    /// truncates longer ones, so they are refused instead).
    fn max_identifier(self) -> Option<usize> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(63),
            Dialect::MySql { .. } => Some(64),
        }
    }

    /// Why a table or column name cannot be used, if it cannot.
    pub fn check_identifier(self, ident: &str) -> Option<String> {
        let max = self.max_identifier()?;
        let len = match self {
            Dialect::MySql { .. } => ident.chars().count(),
            _ => ident.len(),
        };
        (len > max).then(|| {
            format!(
                "identifier `{ident}` is longer than {} allows ({max})",
                self.name()
            )
        })
    }

    /// The `n`th (1-based) placeholder for a value of column `col`.
    /// PostgreSQL gets an explicit cast, so text-bound decimals and instants
    /// (and typed NULLs) land in their column's type.
    pub fn placeholder(self, n: usize, col: Option<&Column>) -> String {
        match self {
            Dialect::Postgres => match col.and_then(|c| pg_type(c).ok()) {
                Some(ty) => format!("${n}::{}", cast_type(&ty)),
                None => format!("${n}"),
            },
            _ => "?".to_string(),
        }
    }

    /// Turn a statement written with `?` placeholders into this dialect's.
    pub fn sql<'a>(self, text: &'a str) -> Cow<'a, str> {
        if self != Dialect::Postgres || !text.contains('?') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut n = 0;
        for ch in text.chars() {
            if ch == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(ch);
            }
        }
        Cow::Owned(out)
    }

    /// Column type in DDL; `Err` says why this database cannot hold the column.
    pub fn column_type(self, col: &Column, is_key: bool) -> Result<String, String> {
        match self {
            Dialect::Sqlite => Ok(sqlite_type(col.ty).to_string()),
            Dialect::Postgres => pg_type(col),
            Dialect::MySql { .. } => mysql_type(col, is_key),
        }
    }

    /// Table options after the column list.
    ///
    /// PostgreSQL fills a page of a `rewritten` table to half only: an
    /// update that finds room on its row's page is heap-only (HOT), adding
    /// no entry to the key index (as `sluice_state_rows`). Measured on
    /// 305k events, means of alternating runs: `orders_by_customer` (~2.3M
    /// group rows rewritten) 38.1 s against 42.1 s, `orders_events_5m`
    /// 4.41 s against 4.67 s. Tables of plugins' rows keep the default:
    /// mostly inserted, a half-filled page would double them on disk —
    /// unless the pipeline sets `fillfactor` (`[tables]`) for them: a mirror
    /// of an updated table, 305k changes (40 % updates) into PostgreSQL,
    /// 2.65 s at 50 (every update heap-only), 2.80 s at 70, 2.91 s at 100
    /// (means of 3 alternating runs; with the table made by hand at each:
    /// 2.38, 2.60, 2.83 s), its table 18 MB at 50 against 17 at 100.
    pub fn table_options(self, rewritten: bool, fillfactor: Option<u8>) -> String {
        match self {
            Dialect::MySql { collation } => {
                format!(" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}")
            }
            Dialect::Postgres if rewritten => " WITH (fillfactor = 50)".to_string(),
            Dialect::Postgres => match fillfactor {
                Some(f) => format!(" WITH (fillfactor = {f})"),
                None => String::new(),
            },
            Dialect::Sqlite => String::new(),
        }
    }

    /// The clause after `INSERT … VALUES …` that turns it into an upsert.
    pub fn upsert_clause(self, key: &[String], non_key: &[String]) -> String {
        match self {
            Dialect::MySql { .. } => {
                let sets: Vec<String> = if non_key.is_empty() {
                    vec![format!("{0} = {0}", key[0])]
                } else {
                    non_key
                        .iter()
                        .map(|c| format!("{c} = VALUES({c})"))
                        .collect()
                };
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            _ if non_key.is_empty() => format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")),
            _ => format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                non_key
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Rows per multi-row statement for a table of `columns` columns.
    pub fn max_rows(self, columns: usize) -> usize {
        power_of_two_at_most((MAX_PARAMS / columns.max(1)).clamp(1, MAX_ROWS))
    }

    /// `INSERT` that leaves an existing row alone.
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::Postgres => "INSERT",
            Dialect::MySql { .. } => "INSERT IGNORE",
        }
    }

    /// What `insert_ignore` needs at the end of the statement.
    pub fn insert_ignore_tail(self) -> &'static str {
        match self {
            Dialect::Postgres => " ON CONFLICT DO NOTHING",
            _ => "",
        }
    }

    /// The bookkeeping tables: offsets, dead letters, decoder facts, column
    /// catalog, operator state.
    pub fn meta_ddl(self) -> &'static [&'static str] {
        match self {
            Dialect::Sqlite => SQLITE_META,
            Dialect::Postgres => PG_META,
            Dialect::MySql { .. } => MYSQL_META,
        }
    }

    /// A value this database cannot hold faithfully (it would change it).
    pub fn unstorable(self, v: &Value, col: &Column) -> Option<String> {
        match (self, v) {
            (Dialect::Sqlite, Value::Float(f)) if f.is_nan() => {
                Some("NaN cannot be stored in SQLite (it would become NULL)".to_string())
            }
            (Dialect::MySql { .. }, Value::Float(f)) if !f.is_finite() => Some(format!(
                "{f} cannot be stored in MySQL/MariaDB (DOUBLE has no NaN or infinity)"
            )),
            (_, Value::Decimal(d)) if col.ty == ColumnType::Decimal => {
                let scale = self.decimal_scale(col)?;
                let frac = d.split_once('.').map(|(_, f)| f.trim_end_matches('0'));
                let digits = frac.map_or(0, str::len);
                (digits > scale as usize).then(|| {
                    format!(
                        "decimal {d} has {digits} significant fractional digits; column `{}` keeps {scale}, so it would be rounded",
                        col.name
                    )
                })
            }
            _ => None,
        }
    }

    /// The scale the sink column rounds to, if it rounds at all.
    fn decimal_scale(self, col: &Column) -> Option<u32> {
        let declared = col.decimal.and_then(|d| d.scale);
        match self {
            // SQLite keeps decimals as text.
            Dialect::Sqlite => None,
            // Unconstrained NUMERIC keeps every digit.
            Dialect::Postgres => declared,
            Dialect::MySql { .. } => Some(declared.unwrap_or(MYSQL_DEFAULT_SCALE)),
        }
    }

    /// Savepoint statements (the same words in all three).
    pub const SAVEPOINT: &'static str = "SAVEPOINT sluice_ev";
    pub const RELEASE: &'static str = "RELEASE SAVEPOINT sluice_ev";
    pub const ROLLBACK_TO: &'static str = "ROLLBACK TO SAVEPOINT sluice_ev";

    /// Errors that concern one row's data (the event is dead-lettered and
    /// the pipeline goes on). Everything else is the database's own trouble:
    /// the batch rolls back and the run stops.
    pub fn is_row_error(self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(d) = e else {
            return matches!(e, sqlx::Error::Encode(_));
        };
        let code = d.code();
        let code = code.as_deref().unwrap_or("");
        match self {
            // Primary result codes TOOBIG, CONSTRAINT, MISMATCH, RANGE.
            Dialect::Sqlite => code
                .parse::<i64>()
                .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25)),
            // SQLSTATE classes 22 (data exception) and 23 (integrity constraint).
            Dialect::Postgres => code.starts_with("22") || code.starts_with("23"),
            Dialect::MySql { .. } => {
                code.starts_with("22")
                    || code.starts_with("23")
                    || mysql_errno(d.as_ref()).is_some_and(|n| {
                        // incorrect value, truncated value, NULL in NOT NULL,
                        // invalid JSON text, check constraint
                        matches!(n, 1048 | 1265 | 1292 | 1366 | 1367 | 1411 | 3140 | 4025)
                    })
            }
        }
    }

    /// PostgreSQL's unique violation (SQLSTATE 23505): a plain insert of a
    /// row taken for new met a row with its key.
    pub fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
    }

    /// An error in a multi-row statement after which the batch is retried
    /// event by event: a row error, or two rows of one statement meeting the
    /// same key (PostgreSQL refuses that: SQLSTATE 21000).
    pub fn retry_event_by_event(self, e: &sqlx::Error) -> bool {
        if self.is_row_error(e) {
            return true;
        }
        matches!(e, sqlx::Error::Database(d) if self == Dialect::Postgres && d.code().as_deref() == Some("21000"))
    }

    /// An error that aborted the transaction because of other sessions
    /// (deadlock, serialization failure, lock wait timeout, a busy SQLite
    /// file): the same transaction may pass if tried again.
    pub fn is_transient(self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(d) = e else {
            return false;
        };
        let code = d.code();
        let code = code.as_deref().unwrap_or("");
        match self {
            // SQLITE_BUSY, SQLITE_LOCKED (after busy_timeout)
            Dialect::Sqlite => code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
            Dialect::Postgres => matches!(code, "40P01" | "40001" | "55P03"),
            // deadlock, lock wait timeout
            Dialect::MySql { .. } => {
                mysql_errno(d.as_ref()).is_some_and(|n| matches!(n, 1213 | 1205))
            }
        }
    }

    /// A failed CREATE/ALTER that concerns the table's shape (the plugin's
    /// declaration), not the database's health or our permissions.
    pub fn is_table_error(self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(d) = e else {
            return false;
        };
        let code = d.code();
        let code = code.as_deref().unwrap_or("");
        match self {
            Dialect::Sqlite => code.parse::<i64>().is_ok_and(|c| c & 0xff == 1),
            Dialect::Postgres => {
                (code.starts_with("42") && code != "42501") || code.starts_with("54")
            }
            Dialect::MySql { .. } => mysql_errno(d.as_ref()).is_some_and(|n| {
                // name too long, key too long, TEXT/BLOB key, row too large,
                // too many columns, bad column name, bad default
                matches!(n, 1059 | 1071 | 1074 | 1117 | 1118 | 1166 | 1170 | 1067)
            }),
        }
    }
}

/// The largest power of two not above `n` (`n` ≥ 1): multi-row statements
/// come in these sizes.
pub fn power_of_two_at_most(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

fn mysql_errno(d: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

/// MySQL DECIMAL's widest shape; used when the source gives no precision.
const MYSQL_MAX_PRECISION: u32 = 65;
const MYSQL_MAX_SCALE: u32 = 30;
const MYSQL_DEFAULT_SCALE: u32 = MYSQL_MAX_SCALE;
/// Longest text or bytes key MySQL can index in utf8mb4 (767 bytes in
/// COMPACT rows, 3072 in DYNAMIC: 255 characters fits both for one column).
const MYSQL_KEY_CHARS: u32 = 255;

fn sqlite_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Unknown => "",
        ColumnType::Boolean | ColumnType::Int => "INTEGER",
        ColumnType::Float => "REAL",
        ColumnType::Bytes => "BLOB",
        ColumnType::Decimal
        | ColumnType::Text
        | ColumnType::Timestamp
        | ColumnType::LocalTimestamp
        | ColumnType::Date
        | ColumnType::Time
        | ColumnType::Json => "TEXT",
    }
}

fn untyped(col: &Column, db: &str) -> String {
    format!(
        "column `{}` has no known type (the source sent no schema); {db} needs one: declare it under [columns.<table>] in the pipeline file",
        col.name
    )
}

fn pg_type(col: &Column) -> Result<String, String> {
    Ok(match col.ty {
        ColumnType::Unknown => return Err(untyped(col, "PostgreSQL")),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Int => "BIGINT".into(),
        ColumnType::Float => "DOUBLE PRECISION".into(),
        ColumnType::Decimal => match col.decimal {
            Some(crate::model::DecimalParams {
                precision: Some(p),
                scale: Some(s),
            }) if (1..=1000).contains(&p) && s <= p => format!("NUMERIC({p},{s})"),
            _ => "NUMERIC".into(),
        },
        ColumnType::Text => "TEXT".into(),
        ColumnType::Bytes => "BYTEA".into(),
        ColumnType::Timestamp => "TIMESTAMPTZ".into(),
        ColumnType::LocalTimestamp => "TIMESTAMP".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME".into(),
        ColumnType::Json => "JSONB".into(),
    })
}

/// The type name in a `$n::type` cast (no typmod: the column applies it).
fn cast_type(ddl: &str) -> &str {
    ddl.split('(').next().unwrap_or(ddl)
}

fn mysql_type(col: &Column, is_key: bool) -> Result<String, String> {
    Ok(match col.ty {
        ColumnType::Unknown => return Err(untyped(col, "MySQL/MariaDB")),
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Int => "BIGINT".into(),
        ColumnType::Float => "DOUBLE".into(),
        ColumnType::Decimal => {
            let (p, s) = match col.decimal {
                Some(d) => (d.precision, d.scale),
                None => (None, None),
            };
            let s = s.unwrap_or(MYSQL_DEFAULT_SCALE);
            let p = p.unwrap_or(MYSQL_MAX_PRECISION);
            if p > MYSQL_MAX_PRECISION || s > MYSQL_MAX_SCALE || s > p {
                return Err(format!(
                    "column `{}` is DECIMAL({p},{s}); MySQL/MariaDB hold at most DECIMAL({MYSQL_MAX_PRECISION},{MYSQL_MAX_SCALE})",
                    col.name
                ));
            }
            format!("DECIMAL({p},{s})")
        }
        ColumnType::Text | ColumnType::Json if is_key => format!("VARCHAR({MYSQL_KEY_CHARS})"),
        ColumnType::Bytes if is_key => format!("VARBINARY({MYSQL_KEY_CHARS})"),
        ColumnType::Text => "LONGTEXT".into(),
        ColumnType::Json => "JSON".into(),
        ColumnType::Bytes => "LONGBLOB".into(),
        // Instants are stored as their UTC date-time (catalogued in sluice_columns).
        ColumnType::Timestamp | ColumnType::LocalTimestamp => "DATETIME(6)".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME(6)".into(),
    })
}

// The same words in SQLite and PostgreSQL.
const TEXT_DECODER_STATE: &str = "CREATE TABLE IF NOT EXISTS sluice_decoder_state (
        pipeline TEXT NOT NULL, topic TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        value TEXT NOT NULL, PRIMARY KEY (pipeline, topic, kind, name))";
const TEXT_COLUMNS: &str = "CREATE TABLE IF NOT EXISTS sluice_columns (
        table_name TEXT NOT NULL, column_name TEXT NOT NULL, logical_type TEXT NOT NULL,
        PRIMARY KEY (table_name, column_name))";

const SQLITE_META: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_offsets (
        pipeline TEXT NOT NULL, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (pipeline, topic, kafka_partition))",
    "CREATE TABLE IF NOT EXISTS sluice_dlq (
        id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL,
        topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset INTEGER NOT NULL,
        record_key TEXT, record_value TEXT, record_headers TEXT, stage TEXT NOT NULL, plugin TEXT,
        reason TEXT NOT NULL, failed_at TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0)",
    TEXT_DECODER_STATE,
    TEXT_COLUMNS,
    "CREATE TABLE IF NOT EXISTS sluice_state_ids (
        sid INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, operator TEXT NOT NULL, kind TEXT NOT NULL,
        UNIQUE (pipeline, operator, kind))",
    "CREATE TABLE IF NOT EXISTS sluice_state_rows (
        sid INTEGER NOT NULL, k BLOB NOT NULL, v BLOB NOT NULL, expires INTEGER,
        PRIMARY KEY (sid, k)) WITHOUT ROWID",
    // Partial: most state rows (source rows, partitions) never expire, and
    // an index entry per row would double each state write.
    "CREATE INDEX IF NOT EXISTS sluice_state_rows_expiry ON sluice_state_rows (sid, expires)
        WHERE expires IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS sluice_state_seq (pipeline TEXT NOT NULL PRIMARY KEY, seq INTEGER NOT NULL)",
];

const PG_META: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_offsets (
        pipeline TEXT NOT NULL, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL,
        next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (pipeline, topic, kafka_partition))",
    "CREATE TABLE IF NOT EXISTS sluice_dlq (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, pipeline TEXT NOT NULL,
        topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL,
        record_key TEXT, record_value TEXT, record_headers TEXT, stage TEXT NOT NULL, plugin TEXT,
        reason TEXT NOT NULL, failed_at TIMESTAMPTZ NOT NULL, published BOOLEAN NOT NULL DEFAULT FALSE)",
    TEXT_DECODER_STATE,
    TEXT_COLUMNS,
    // State rows are keyed by a number per (pipeline, operator, kind): an
    // index entry of ~60 bytes instead of ~100 with the names in it, and
    // two key columns to compare instead of four (state upserts 25 % faster
    // in PostgreSQL, measured). The view `sluice_state` shows them by name.
    "CREATE TABLE IF NOT EXISTS sluice_state_ids (
        sid BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, pipeline TEXT COLLATE \"C\" NOT NULL,
        operator TEXT COLLATE \"C\" NOT NULL, kind TEXT COLLATE \"C\" NOT NULL,
        UNIQUE (pipeline, operator, kind))",
    // Half of each page left free: a state row is rewritten on nearly
    // every batch that touches it, and an update that finds room on its
    // page is a heap-only (HOT) update that adds no entry to the key
    // index. Measured on `orders_events_5m` (305k events): 38 % of the
    // updates HOT at the default 100, all of them at 50; 13 % less time
    // and a smaller table (60 MB against 81).
    "CREATE TABLE IF NOT EXISTS sluice_state_rows (
        sid BIGINT NOT NULL, k BYTEA NOT NULL, v BYTEA NOT NULL, expires BIGINT,
        PRIMARY KEY (sid, k)) WITH (fillfactor = 50)",
    "CREATE INDEX IF NOT EXISTS sluice_state_rows_expiry ON sluice_state_rows (sid, expires)
        WHERE expires IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS sluice_state_seq (pipeline TEXT NOT NULL PRIMARY KEY, seq BIGINT NOT NULL)",
];

// Key parts sized so composite keys stay under InnoDB's 3072-byte limit.
const MYSQL_META: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_offsets (
        pipeline VARCHAR(190) NOT NULL, topic VARCHAR(249) NOT NULL, kafka_partition INT NOT NULL,
        next_offset BIGINT NOT NULL, updated_at DATETIME(6) NOT NULL,
        PRIMARY KEY (pipeline, topic, kafka_partition))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_dlq (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, pipeline VARCHAR(190) NOT NULL,
        topic VARCHAR(249) NOT NULL, kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL,
        record_key LONGTEXT, record_value LONGTEXT, record_headers LONGTEXT, stage VARCHAR(16) NOT NULL,
        plugin TEXT, reason TEXT NOT NULL, failed_at DATETIME(6) NOT NULL,
        published BOOLEAN NOT NULL DEFAULT FALSE)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_decoder_state (
        pipeline VARCHAR(190) NOT NULL, topic VARCHAR(249) NOT NULL, kind VARCHAR(32) NOT NULL,
        name VARCHAR(190) NOT NULL, value TEXT NOT NULL, PRIMARY KEY (pipeline, topic, kind, name))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_columns (
        table_name VARCHAR(190) NOT NULL, column_name VARCHAR(190) NOT NULL,
        logical_type VARCHAR(32) NOT NULL, PRIMARY KEY (table_name, column_name))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_state_ids (
        sid BIGINT AUTO_INCREMENT PRIMARY KEY, pipeline VARCHAR(190) NOT NULL,
        operator VARCHAR(190) NOT NULL, kind VARCHAR(4) NOT NULL,
        UNIQUE KEY sluice_state_ids_name (pipeline, operator, kind))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_state_rows (
        sid BIGINT NOT NULL, k VARBINARY(1024) NOT NULL, v LONGBLOB NOT NULL, expires BIGINT,
        PRIMARY KEY (sid, k), INDEX sluice_state_rows_expiry (sid, expires))
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    "CREATE TABLE IF NOT EXISTS sluice_state_seq (
        pipeline VARCHAR(190) NOT NULL PRIMARY KEY, seq BIGINT NOT NULL)
        ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DecimalParams;

    fn col(name: &str, ty: ColumnType, decimal: Option<DecimalParams>) -> Column {
        Column {
            name: name.into(),
            ty,
            nullable: true,
            decimal,
        }
    }

    #[test]
    fn postgres_placeholders_cast_to_the_column_type() {
        let price = col(
            "price",
            ColumnType::Decimal,
            Some(DecimalParams {
                precision: Some(10),
                scale: Some(2),
            }),
        );
        assert_eq!(
            Dialect::Postgres.placeholder(3, Some(&price)),
            "$3::NUMERIC"
        );
        assert_eq!(
            Dialect::Postgres.column_type(&price, false).unwrap(),
            "NUMERIC(10,2)"
        );
        assert_eq!(
            Dialect::Postgres.sql("SELECT a FROM t WHERE b = ? AND c = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(Dialect::Sqlite.placeholder(3, Some(&price)), "?");
    }

    #[test]
    fn rounding_decimals_are_refused_not_rounded() {
        let price = col(
            "price",
            ColumnType::Decimal,
            Some(DecimalParams {
                precision: Some(10),
                scale: Some(2),
            }),
        );
        let pg = Dialect::Postgres;
        assert!(pg
            .unstorable(&Value::Decimal("1.230".into()), &price)
            .is_none());
        let why = pg
            .unstorable(&Value::Decimal("1.234".into()), &price)
            .unwrap();
        assert!(why.contains("rounded"), "{why}");
        // MySQL's fallback DECIMAL(65,30) rounds past 30 digits.
        let free = col("x", ColumnType::Decimal, None);
        let my = Dialect::MySql {
            collation: "utf8mb4_bin",
        };
        assert_eq!(my.column_type(&free, false).unwrap(), "DECIMAL(65,30)");
        assert!(pg
            .unstorable(&Value::Decimal(format!("0.{}1", "0".repeat(30))), &free)
            .is_none());
        assert!(my
            .unstorable(&Value::Decimal(format!("0.{}1", "0".repeat(30))), &free)
            .is_some());
    }

    #[test]
    fn mysql_text_keys_are_indexable_and_wide_decimals_refused() {
        let my = Dialect::MySql {
            collation: "utf8mb4_bin",
        };
        let name = col("name", ColumnType::Text, None);
        assert_eq!(my.column_type(&name, true).unwrap(), "VARCHAR(255)");
        assert_eq!(my.column_type(&name, false).unwrap(), "LONGTEXT");
        let wide = col(
            "w",
            ColumnType::Decimal,
            Some(DecimalParams {
                precision: Some(80),
                scale: Some(2),
            }),
        );
        assert!(my.column_type(&wide, false).unwrap_err().contains("65"));
        assert!(Dialect::Postgres
            .column_type(&col("u", ColumnType::Unknown, None), false)
            .is_err());
    }

    #[test]
    fn statement_rows_are_powers_of_two_under_the_parameter_limit() {
        assert_eq!(Dialect::Postgres.max_rows(3), MAX_ROWS);
        assert_eq!(Dialect::Postgres.max_rows(200), 128);
        assert_eq!(Dialect::Postgres.max_rows(40_000), 1);
    }
}
