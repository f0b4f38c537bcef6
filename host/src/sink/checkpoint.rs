//! The sink's committed offsets, read on demand from synchronous code: the
//! Kafka consumer's rebalance callback must set each newly assigned
//! partition's start offset before it returns, and another host of the same
//! pipeline may have moved that offset since this one started.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use super::sql::SqlSink;

/// Next offset per (topic, partition), as committed in the sink.
pub type Offsets = HashMap<(String, i32), i64>;

type Reply = mpsc::SyncSender<anyhow::Result<Offsets>>;

/// A connection of its own to the sink, on a thread of its own (with its own
/// small runtime), so a blocking caller never waits on the async workers.
pub struct CheckpointReader {
    requests: mpsc::Sender<Reply>,
}

impl CheckpointReader {
    /// Connect; blocks until the connection is up (call off the async workers).
    pub fn connect(url: String, shown: String, pipeline: String) -> anyhow::Result<Self> {
        let (requests, incoming) = mpsc::channel::<Reply>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<anyhow::Result<()>>(1);
        std::thread::Builder::new()
            .name("sluice-checkpoint".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut sink = match SqlSink::open(&url, &shown, &pipeline).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    // Nothing else runs on this runtime: waiting here blocks no one.
                    while let Ok(reply) = incoming.recv() {
                        let mut offsets = sink.load_offsets().await;
                        if offsets.is_err() {
                            // Closed while idle (wait_timeout, a proxy)? Reconnect once.
                            match SqlSink::open(&url, &shown, &pipeline).await {
                                Ok(fresh) => {
                                    sink = fresh;
                                    offsets = sink.load_offsets().await;
                                }
                                Err(e) => tracing::warn!("reconnecting to the sink: {e:#}"),
                            }
                        }
                        let _ = reply.send(offsets);
                    }
                });
            })
            .context("starting the checkpoint reader thread")?;
        ready_rx
            .recv()
            .context("the checkpoint reader thread ended")?
            .context("connecting the checkpoint reader to the sink")?;
        Ok(CheckpointReader { requests })
    }

    /// The committed offsets now (blocking).
    pub fn read(&self) -> anyhow::Result<Offsets> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.requests
            .send(tx)
            .map_err(|_| anyhow::anyhow!("the checkpoint reader thread ended"))?;
        rx.recv_timeout(Duration::from_secs(30))
            .context("no answer from the sink within 30 s")?
    }
}
