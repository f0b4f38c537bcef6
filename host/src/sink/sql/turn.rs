//! The pipeline's turn for stateful commits. Operators whose state several
//! hosts may change (aggregations: orders keyed by order id, grouped by
//! customer; joins: both tables meet under one join key) commit one at a
//! time per pipeline: `sluice_state_seq` is locked (after the offsets) and
//! moved on in the transaction, so a second host waits for the first to
//! commit and then reads its state. The sequence also tells whether the
//! state cached in memory is still the database's: a count that moved by
//! more than this host's own commits means another host wrote.

use super::*;

/// This host's view of the pipeline's state sequence.
#[derive(Default)]
pub(super) struct StateTurn {
    /// `sluice_state_seq` after this host's last stateful commit.
    last_seq: Option<i64>,
    /// The sequence this attempt took (committed with it or not).
    pending_seq: Option<i64>,
}

impl StateTurn {
    /// Lock the pipeline's state sequence and move it on. `false` when the
    /// state cached in memory may be stale (another host committed state
    /// since this host's last commit, or this host has none): drop it.
    pub(super) async fn take(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
    ) -> anyhow::Result<bool> {
        let insert = format!(
            "{} INTO sluice_state_seq (pipeline, seq) VALUES (?, 0){}",
            d.insert_ignore(),
            d.insert_ignore_tail()
        );
        sqlx::query(&d.sql(&insert))
            .bind(pipeline)
            .execute(&mut *conn)
            .await
            .context("creating the state sequence")?;
        sqlx::query(&d.sql("UPDATE sluice_state_seq SET seq = seq + 1 WHERE pipeline = ?"))
            .bind(pipeline)
            .execute(&mut *conn)
            .await
            .context("taking the state turn")?;
        let seq: i64 = sqlx::query(&d.sql("SELECT seq FROM sluice_state_seq WHERE pipeline = ?"))
            .bind(pipeline)
            .fetch_one(&mut *conn)
            .await
            .context("reading the state sequence")?
            .try_get(0)?;
        let fresh = self.last_seq.map(|s| s + 1) == Some(seq);
        if !fresh && self.last_seq.is_some() {
            tracing::debug!("another host of the pipeline committed state; reading it afresh");
        }
        self.pending_seq = Some(seq);
        Ok(fresh)
    }

    /// After COMMIT.
    pub(super) fn committed(&mut self) {
        if let Some(seq) = self.pending_seq.take() {
            self.last_seq = Some(seq);
        }
    }

    /// After a failed attempt: nothing cached can be trusted.
    pub(super) fn invalidate(&mut self) {
        self.last_seq = None;
        self.pending_seq = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hosts of one pipeline on one database: each knows its cache is
    /// current only while the other has not committed state since.
    #[tokio::test]
    async fn a_commit_by_another_host_makes_the_cache_stale() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("t.db").display());
        let mut a = SqlSink::open(&url, "a", "p").await.unwrap();
        let mut b = SqlSink::open(&url, "b", "p").await.unwrap();
        let d = a.dialect;
        let (mut ta, mut tb) = (StateTurn::default(), StateTurn::default());
        async fn turn(sink: &mut SqlSink, t: &mut StateTurn, d: Dialect, commit: bool) -> bool {
            let mut tx = sink.conn.begin().await.unwrap();
            let fresh = t.take(&mut tx, d, "p").await.unwrap();
            if commit {
                tx.commit().await.unwrap();
                t.committed();
            } else {
                tx.rollback().await.unwrap();
            }
            fresh
        }
        assert!(!turn(&mut a, &mut ta, d, true).await, "nothing cached yet");
        assert!(turn(&mut a, &mut ta, d, true).await, "only this host wrote");
        assert!(!turn(&mut b, &mut tb, d, true).await);
        assert!(!turn(&mut a, &mut ta, d, true).await, "b wrote in between");
        // a rolled-back attempt does not count as a commit by anyone
        assert!(!turn(&mut b, &mut tb, d, false).await);
        assert!(turn(&mut a, &mut ta, d, true).await);
        ta.invalidate();
        assert!(
            !turn(&mut a, &mut ta, d, true).await,
            "after a failed attempt"
        );
    }
}
