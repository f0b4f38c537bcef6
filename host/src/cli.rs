//! Command line: `sluice run`, logging setup, Ctrl-C handling, exit summary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Overrides, Pipeline};
use crate::pipeline::{self, RunSummary};
use crate::stats::Stats;

/// Sluice runs change-data-capture transforms as WebAssembly plugins.
///
/// Debezium change events (from Kafka or a kcat -J dump) are decoded once,
/// handed in batches to the plugins in a folder, and their output is written
/// to a sink (SQLite, PostgreSQL, MySQL/MariaDB) together with the source
/// offsets, exactly once.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: source → Debezium decoding → plugins → sink.
    ///
    /// Examples:
    ///   sluice run --source file:events.jsonl --sink sqlite:out.db --plugins plugins/ --until-caught-up
    ///   sluice run examples/demo.toml --until-caught-up   (after examples/demo.sh built the plugins)
    ///   sluice run --source kafka://localhost:9092 --topics '^pgserver1\.public\..*' \
    ///       --name orders --sink postgres://sluice:sluice@localhost/sink --plugins plugins/
    ///
    /// The sink stores the source offsets in the same transaction as the rows,
    /// so running the same input again applies nothing twice. Rejected events
    /// land in the `sluice_dlq` table with the reason and the stage (and, with
    /// a Kafka source, in the topic NAME.dlq with Kafka Connect's headers).
    /// Drop or replace a .wasm in the plugin folder while running: it is
    /// compiled in the background and swapped in between two batches.
    /// Log verbosity follows RUST_LOG (default `info`).
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Pipeline file (TOML). Command-line options override its keys.
    pub pipeline: Option<PathBuf>,

    /// Where events come from: `file:PATH` (kcat -C -J JSON lines) or
    /// `kafka://HOST:PORT` (with --topics and --group).
    #[arg(long, value_name = "URI")]
    pub source: Option<String>,

    /// Kafka: regex of the topics to consume, e.g. '^pgserver1\.public\..*'.
    #[arg(long, value_name = "REGEX")]
    pub topics: Option<String>,

    /// Kafka: consumer group [default: sluice-<pipeline name>]. Offsets are
    /// taken from the sink, not from the group; group offsets are committed
    /// for lag monitoring only.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Kafka: this copy's static member id in the group [default: the host
    /// name]. A restarted copy with the same id gets its partitions back at
    /// once; a second copy with the same id fences the first, which stops.
    /// Give each copy of a pipeline on one machine its own id.
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,

    /// Where results go: `sqlite:PATH`, `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// or `mysql://USER:PASSWORD@HOST:PORT/DB` (MariaDB too). Tables are
    /// created from the plugins' declared outputs.
    #[arg(long, value_name = "URI")]
    pub sink: Option<String>,

    /// Folder of .wasm plugins (watched for changes).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,

    /// Stop (exit 0) once the source has nothing more, instead of following it.
    /// Kafka: once everything up to the end offsets seen at start is in the
    /// sink, whichever host of the pipeline committed it.
    #[arg(long)]
    pub until_caught_up: bool,

    /// Pipeline name; offsets are stored under it [default: sluice].
    #[arg(long)]
    pub name: Option<String>,

    /// Kafka: topic for dead-lettered records (original key, value and
    /// headers plus `__connect.errors.*` headers) [default: <name>.dlq].
    /// Give "" to keep dead letters in the sink's sluice_dlq table only.
    #[arg(long, value_name = "TOPIC")]
    pub dlq_topic: Option<String>,

    /// Most records per sink transaction [default: 10000]. Transactions
    /// fill up only while catching up (the sink takes every batch that
    /// queued during its last commit); live, a batch ends as soon as no
    /// record waits and the sink can take it (group commit).
    #[arg(long, value_name = "N")]
    pub max_batch: Option<usize>,
}

/// Initialise logging on stderr.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

/// Entry point after argument parsing.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(
        args.pipeline.as_deref(),
        Overrides {
            source: args.source,
            topics: args.topics,
            group: args.group,
            instance_id: args.instance_id,
            sink: args.sink,
            plugins: args.plugins,
            until_caught_up: args.until_caught_up,
            name: args.name,
            max_batch_records: args.max_batch,
            dlq_topic: args.dlq_topic,
        },
    )?;
    tracing::info!(
        pipeline = %pipeline.name,
        source = ?pipeline.source,
        sink = ?pipeline.sink,
        plugins = %pipeline.plugins.display(),
        until_caught_up = pipeline.until_caught_up,
        "starting"
    );
    let cancel = CancellationToken::new();
    let ctrl_c = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!(
                    "interrupt: finishing the current batch, then stopping (Ctrl-C again to abort)"
                );
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::error!("second interrupt: aborting; uncommitted batches will be re-read on restart");
                    std::process::exit(130);
                }
            }
        })
    };
    let summary = pipeline::run(pipeline, cancel)
        .await
        .context("pipeline failed")?;
    ctrl_c.abort();
    print_summary(&summary);
    Ok(())
}

/// Prints the run's summary on stdout. The work is committed by now, so a
/// reader that went away (`sluice … | head -1`) must not turn it into a panic.
fn print_summary(s: &RunSummary) {
    use std::io::Write;
    let text = summary_text(s);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!("cannot print the run summary: {e}");
        }
    }
}

fn summary_text(s: &RunSummary) -> String {
    use std::fmt::Write;
    let st = &s.stats;
    let g = Stats::get;
    let mut t = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        t,
        "read {} records in {:.2}s ({} already applied, skipped; {} tombstones; {} unrouted)",
        g(&st.read),
        s.elapsed.as_secs_f64(),
        g(&st.skipped),
        g(&st.tombstones),
        g(&st.unrouted)
    );
    let _ = writeln!(
        t,
        "committed {} records in {} batches, {} sink writes, {} plugin reloads",
        g(&st.committed),
        g(&st.batches),
        g(&st.writes),
        g(&st.reloads)
    );
    let _ = writeln!(
        t,
        "dead-lettered {} (decode {}, plugin {}, sink {}{}){}",
        st.dead_lettered(),
        g(&st.dlq_decode),
        g(&st.dlq_plugin),
        g(&st.dlq_sink),
        if g(&st.dlq_aggregate) > 0 {
            format!(", aggregate {}", g(&st.dlq_aggregate))
        } else {
            String::new()
        },
        if st.dead_lettered() > 0 {
            " -> see table sluice_dlq"
        } else {
            ""
        }
    );
    let secs = |c: &std::sync::atomic::AtomicU64| g(c) as f64 / 1e6;
    let _ = writeln!(
        t,
        "time: decode {:.2}s, plugins {:.2}s, sink commits {:.2}s; the source waited {:.2}s for the stages ahead, the sink {:.2}s for batches",
        secs(&st.decode_us),
        secs(&st.plugin_us),
        secs(&st.commit_us),
        secs(&st.source_blocked_us),
        secs(&st.sink_idle_us)
    );
    if g(&st.row_by_row) > 0 {
        let _ = writeln!(
            t,
            "{} batches written again event by event after a row error in their bulk write",
            g(&st.row_by_row)
        );
    }
    if g(&st.duplicates) > 0 {
        let _ = writeln!(
            t,
            "{} re-delivered changes skipped by aggregations (not newer than what they hold for the row)",
            g(&st.duplicates)
        );
    }
    if g(&st.late_applied) + g(&st.late_dead_lettered) > 0 {
        let _ = writeln!(
            t,
            "late events (behind the watermark: closed windows, expired interval-join partners): {} applied, {} dead-lettered",
            g(&st.late_applied),
            g(&st.late_dead_lettered)
        );
    }
    if !s.state.is_empty() {
        t.push_str("operator state (aggregations and joins, cached by this host):\n");
        for (op, rows, bytes) in &s.state {
            let _ = writeln!(t, "  {op:<32} {rows:>8} rows {bytes:>10} bytes");
        }
    }
    if g(&st.dlq_published) > 0 {
        let _ = writeln!(
            t,
            "{} dead letters copied to the DLQ topic",
            g(&st.dlq_published)
        );
    }
    if g(&st.dlq_unsent) > 0 {
        let _ = writeln!(
            t,
            "{} dead letters not yet in the DLQ topic (Kafka refused them, see the log); they stay in sluice_dlq and are sent at the next start",
            g(&st.dlq_unsent)
        );
    }
    t.push_str("sink tables:\n");
    for (name, n) in &s.tables {
        let _ = writeln!(t, "  {name:<24} {n:>8} rows");
    }
    t
}
