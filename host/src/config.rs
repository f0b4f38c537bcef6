//! Pipeline configuration: the TOML file, CLI overrides, and validation that
//! names the bad key. Unknown keys are errors (`deny_unknown_fields`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::decode::temporal::TimeUnit;
use crate::model::ColumnType;

/// Records per commit unless configured: large enough that a catching-up
/// pipeline writes its rows and operator state once per several thousand
/// changes (a row a commit touches is written once, however often it
/// changed); a live pipeline commits as soon as the sink can take a batch.
/// 10,000 against 5,000, measured (305k events into PostgreSQL):
/// `orders_events_5m` 7.0–8.0 s against 8.7–9.3 s, at 167 MB peak RSS
/// against 130 (source batches are a quarter of it, see `pipeline.rs`).
pub const DEFAULT_MAX_BATCH: usize = 10_000;

/// A pipeline as written in `PIPELINE.toml`. Every field may also come from the CLI.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Pipeline name: offsets in the sink are stored under it.
    pub name: Option<String>,
    /// `file:PATH` (kcat -J JSON lines) or `kafka://HOST:PORT[,HOST:PORT]`.
    pub source: Option<String>,
    /// Kafka: regex of the topics to consume.
    pub topics: Option<String>,
    /// Kafka: consumer group.
    pub group: Option<String>,
    /// Kafka: this copy's static member id in the group (default: the host name).
    pub instance_id: Option<String>,
    /// `sqlite:PATH`, `postgres://…` or `mysql://…`.
    pub sink: Option<String>,
    /// Kafka: topic that receives dead-lettered records with Kafka Connect
    /// style error headers [default: `<name>.dlq`; `""` turns it off].
    pub dlq_topic: Option<String>,
    /// Folder of `.wasm` plugins, watched for changes.
    pub plugins: Option<PathBuf>,
    /// Stop once the source has nothing more.
    pub until_caught_up: Option<bool>,
    /// The Debezium connector's `decimal.handling.mode`; matters only for
    /// schemaless streams, where `precise` decimals are base64 text.
    pub decimal_handling: Option<DecimalHandling>,
    #[serde(default)]
    pub batch: BatchFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub streaming: StreamingFile,
    #[serde(default)]
    pub tables: TablesFile,
    /// Column types for schemaless streams, per table name or full topic.
    #[serde(default)]
    pub columns: HashMap<String, HashMap<String, ColumnHint>>,
    /// Primary-key columns per table name or full topic, for records whose
    /// Kafka key is missing or unreadable.
    #[serde(default)]
    pub keys: HashMap<String, Vec<String>>,
}

/// `[batch]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// Most records per commit (Spark's `maxOffsetsPerTrigger`).
    pub max_records: Option<usize>,
    /// Longest a partial batch waits for more records while the stages
    /// ahead are busy, e.g. "200ms".
    pub max_wait: Option<String>,
    /// Shortest a batch waits for more records, even when the sink could
    /// take it (Kafka producers' `linger.ms`): fewer, larger transactions
    /// at the cost of latency. Default 0: group commit alone.
    pub linger: Option<String>,
    /// Write only the last change of each key in a batch (default true);
    /// false writes every change in order, for triggers on the sink tables
    /// that must see each one.
    pub consolidate: Option<bool>,
}

/// `[limits]` section: sandbox limits per plugin instance.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Deadline for one plugin call, e.g. "5s".
    pub call_timeout: Option<String>,
    /// Memory cap per instance in MiB.
    pub memory_mib: Option<u64>,
}

/// `[tables]` section: how the sink tables plugins write are created.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesFile {
    /// PostgreSQL: percent of each page that new rows fill (10–100,
    /// PostgreSQL's default 100). Room left on a page lets an update
    /// rewrite its row there (a heap-only update, no new index entry): for
    /// tables whose rows change often, as a mirror of an updated source
    /// table's do. Rows that are never updated leave that room empty.
    /// Applies to tables created from then on; aggregations' output tables
    /// are always made at 50.
    /// (Read wide so that any integer out of range gets the same message.)
    pub fillfactor: Option<i64>,
}

/// `[streaming]` section: event time and watermarks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingFile {
    /// A source partition with no record for this long stops holding back
    /// watermarks until its next record, e.g. "30s".
    pub idle_timeout: Option<String>,
}

/// A declared column type for schemaless streams.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnHint {
    #[serde(rename = "type")]
    pub ty: HintType,
    /// Decimal scale; for base64 (precise) decimals it is required.
    pub scale: Option<u32>,
    /// Unit of integer temporal values.
    pub unit: Option<TimeUnit>,
    /// How decimals are written: "text", "base64", or decided per value ("auto").
    pub encoding: Option<DecimalEncoding>,
}

/// Types a column may be declared as.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HintType {
    Boolean,
    Int,
    Float,
    Decimal,
    Text,
    Bytes,
    Timestamp,
    LocalTimestamp,
    Date,
    Time,
    Json,
}

impl HintType {
    pub fn column_type(self) -> ColumnType {
        match self {
            HintType::Boolean => ColumnType::Boolean,
            HintType::Int => ColumnType::Int,
            HintType::Float => ColumnType::Float,
            HintType::Decimal => ColumnType::Decimal,
            HintType::Text => ColumnType::Text,
            HintType::Bytes => ColumnType::Bytes,
            HintType::Timestamp => ColumnType::Timestamp,
            HintType::LocalTimestamp => ColumnType::LocalTimestamp,
            HintType::Date => ColumnType::Date,
            HintType::Time => ColumnType::Time,
            HintType::Json => ColumnType::Json,
        }
    }
}

/// Debezium's `decimal.handling.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecimalHandling {
    /// Debezium's default: Connect `Decimal`, base64 bytes without a schema.
    #[default]
    Precise,
    /// Decimals as text: no string is a base64 decimal.
    String,
    /// Decimals as JSON numbers: no string is a base64 decimal.
    Double,
}

/// Decimal wire form in a schemaless stream.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecimalEncoding {
    Auto,
    Text,
    Base64,
}

/// Column hints, looked up by full topic first, then by table name.
#[derive(Clone, Debug, Default)]
pub struct ColumnHints(HashMap<String, HashMap<String, ColumnHint>>);

impl ColumnHints {
    pub fn new(map: HashMap<String, HashMap<String, ColumnHint>>) -> Self {
        ColumnHints(map)
    }

    pub fn for_topic(&self, topic: &str) -> Option<&HashMap<String, ColumnHint>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(topic).or_else(|| {
            let table = topic.rsplit('.').next().unwrap_or(topic);
            self.0.get(table)
        })
    }
}

/// A validated, complete pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub source: SourceSpec,
    pub sink: SinkSpec,
    /// Kafka topic mirroring the sink's `sluice_dlq` table, if any.
    pub dlq_topic: Option<String>,
    pub plugins: PathBuf,
    pub until_caught_up: bool,
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
    /// See `BatchFile::linger`.
    pub batch_linger: Duration,
    /// See `BatchFile::consolidate`.
    pub consolidate: bool,
    /// See `TablesFile::fillfactor`.
    pub table_fillfactor: Option<u8>,
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    /// See `StreamingFile::idle_timeout`.
    pub idle_timeout: Duration,
    pub hints: ColumnHints,
    pub keys: TableKeys,
    pub decimal_handling: DecimalHandling,
}

/// Configured primary keys, looked up by full topic first, then table name.
#[derive(Clone, Debug, Default)]
pub struct TableKeys(HashMap<String, Vec<String>>);

impl TableKeys {
    pub fn new(map: HashMap<String, Vec<String>>) -> Self {
        TableKeys(map)
    }

    pub fn for_topic(&self, topic: &str) -> Option<&Vec<String>> {
        self.0.get(topic).or_else(|| {
            let table = topic.rsplit('.').next().unwrap_or(topic);
            self.0.get(table)
        })
    }
}

/// Where events come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    File(PathBuf),
    Kafka {
        brokers: String,
        topics: String,
        group: String,
        /// Static member id within the group (`group.instance.id` = `GROUP@ID`).
        instance_id: String,
    },
}

/// Where results go.
#[derive(Clone, PartialEq)]
pub enum SinkSpec {
    /// The sqlx URL and the database path.
    Sqlite { url: String, path: PathBuf },
    /// A PostgreSQL (`postgres://`) or MySQL/MariaDB (`mysql://`) URL.
    Server { url: String },
}

impl SinkSpec {
    /// The URL to connect with (credentials included).
    pub fn url(&self) -> &str {
        match self {
            SinkSpec::Sqlite { url, .. } | SinkSpec::Server { url } => url,
        }
    }

    /// The sink for logs and messages: a SQLite file by its path, a server
    /// by its URL with the password replaced by `***`.
    pub fn shown(&self) -> String {
        match self {
            SinkSpec::Sqlite { path, .. } => format!("SQLite file {}", path.display()),
            SinkSpec::Server { url } => redact_password(url),
        }
    }
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Values given on the command line; they override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub source: Option<String>,
    pub topics: Option<String>,
    pub group: Option<String>,
    pub instance_id: Option<String>,
    pub sink: Option<String>,
    pub plugins: Option<PathBuf>,
    pub until_caught_up: bool,
    pub name: Option<String>,
    pub max_batch_records: Option<usize>,
    pub dlq_topic: Option<String>,
}

impl Pipeline {
    /// Read the optional file, apply overrides, validate.
    pub fn load(file: Option<&Path>, ov: Overrides) -> anyhow::Result<Pipeline> {
        let pf = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading pipeline file {}", path.display()))?;
                toml::from_str::<PipelineFile>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => PipelineFile::default(),
        };
        let base = file.and_then(Path::parent).unwrap_or(Path::new(""));
        Self::from_parts(pf, ov, base)
    }

    /// Combine a parsed file (paths relative to `base`) with overrides.
    pub fn from_parts(pf: PipelineFile, ov: Overrides, base: &Path) -> anyhow::Result<Pipeline> {
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let source = match ov.source {
            Some(s) => parse_source(&s, Path::new(""))?,
            None => match pf.source {
                Some(s) => parse_source(&s, base).context("key `source`")?,
                None => bail!("no source: give --source file:PATH or kafka://HOST:PORT (or `source = ...` in the pipeline file)"),
            },
        };
        let name = ov.name.or(pf.name).unwrap_or_else(|| "sluice".into());
        let topics = ov.topics.or(pf.topics);
        let dlq_topic = ov.dlq_topic.or(pf.dlq_topic);
        let group = ov.group.or(pf.group);
        let instance_id = ov.instance_id.or(pf.instance_id);
        let source = match source {
            SourceSpec::Kafka { brokers, .. } => {
                let Some(topics) = topics else {
                    bail!("a kafka:// source needs --topics REGEX (or `topics = ...` in the pipeline file)")
                };
                if let Err(e) = regex_lite::Regex::new(&topics) {
                    bail!("--topics / key `topics`: `{topics}` is not a regular expression: {e}");
                }
                let group = group.unwrap_or_else(|| format!("sluice-{name}"));
                let instance_id = match instance_id {
                    Some(id) if id.trim().is_empty() => {
                        bail!("--instance-id / key `instance_id` must not be empty")
                    }
                    Some(id) => id,
                    None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .ok()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| "localhost".into()),
                };
                SourceSpec::Kafka {
                    brokers,
                    topics,
                    group,
                    instance_id,
                }
            }
            file => {
                if topics.is_some()
                    || group.is_some()
                    || dlq_topic.is_some()
                    || instance_id.is_some()
                {
                    bail!("--topics, --group, --instance-id and --dlq-topic (keys `topics`, `group`, `instance_id`, `dlq_topic`) apply to kafka:// sources only");
                }
                file
            }
        };
        let dlq_topic = match (&source, dlq_topic) {
            (SourceSpec::Kafka { .. }, None) => Some(format!("{name}.dlq")),
            (_, Some(t)) if t.is_empty() => None,
            (_, t) => t,
        };
        if let (SourceSpec::Kafka { topics, .. }, Some(dlq)) = (&source, &dlq_topic) {
            if topic_regex_matches(topics, dlq) {
                bail!("--topics / key `topics`: `{topics}` matches the DLQ topic `{dlq}`, so the pipeline would read its own dead letters again and again; anchor the regex to the change topics (e.g. `^pgserver1\\.public\\..*`) or choose another --dlq-topic");
            }
        }
        let sink = match ov.sink {
            Some(s) => parse_sink(&s, Path::new(""))?,
            None => match pf.sink {
                Some(s) => parse_sink(&s, base).context("key `sink`")?,
                None => bail!("no sink: give --sink sqlite:PATH (or postgres://…, mysql://…) or `sink = \"sqlite:PATH\"` in the pipeline file"),
            },
        };
        let plugins = match ov.plugins.or_else(|| pf.plugins.map(rel)) {
            Some(p) => p,
            None => bail!(
                "no plugin folder: give --plugins DIR or `plugins = \"DIR\"` in the pipeline file"
            ),
        };
        let max_batch_records = ov
            .max_batch_records
            .or(pf.batch.max_records)
            .unwrap_or(DEFAULT_MAX_BATCH);
        if max_batch_records == 0 {
            bail!("key `batch.max_records` must be at least 1");
        }
        let table_fillfactor = match pf.tables.fillfactor {
            None => None,
            Some(f) => match u8::try_from(f).ok().filter(|f| (10..=100).contains(f)) {
                Some(f) => Some(f),
                None => bail!(
                    "key `tables.fillfactor` must be between 10 and 100 (percent of a page), not {f}"
                ),
            },
        };
        let max_batch_wait = match pf.batch.max_wait {
            Some(s) => parse_duration(&s).context("key `batch.max_wait`")?,
            None => Duration::from_millis(200),
        };
        let batch_linger = match pf.batch.linger {
            Some(s) => parse_duration(&s).context("key `batch.linger`")?,
            None => Duration::ZERO,
        };
        if batch_linger > max_batch_wait {
            bail!("key `batch.linger` ({batch_linger:?}) must not be longer than `batch.max_wait` ({max_batch_wait:?})");
        }
        let call_timeout = match pf.limits.call_timeout {
            Some(s) => parse_duration(&s).context("key `limits.call_timeout`")?,
            None => Duration::from_secs(5),
        };
        let idle_timeout = match pf.streaming.idle_timeout {
            Some(s) => parse_duration(&s).context("key `streaming.idle_timeout`")?,
            None => Duration::from_secs(30),
        };
        if idle_timeout.is_zero() {
            bail!("key `streaming.idle_timeout` must be longer than 0s");
        }
        let memory_mib = pf.limits.memory_mib.unwrap_or(128);
        if !(1..=65536).contains(&memory_mib) {
            bail!("key `limits.memory_mib` must be between 1 and 65536 (64 GiB)");
        }
        for (table, key) in &pf.keys {
            if key.is_empty() || key.iter().any(|k| k.trim().is_empty()) {
                bail!("key `keys.{table}` must list one or more column names");
            }
        }
        for (table, cols) in &pf.columns {
            for (col, hint) in cols {
                let key = format!("columns.{table}.{col}");
                if hint.scale.is_some() && hint.ty != HintType::Decimal {
                    bail!("key `{key}.scale` applies to decimals only");
                }
                if hint.encoding.is_some() && hint.ty != HintType::Decimal {
                    bail!("key `{key}.encoding` applies to decimals only");
                }
                if hint.unit.is_some()
                    && !matches!(
                        hint.ty,
                        HintType::Timestamp | HintType::LocalTimestamp | HintType::Time
                    )
                {
                    bail!("key `{key}.unit` applies to timestamps and times only");
                }
                if hint.encoding == Some(DecimalEncoding::Base64) && hint.scale.is_none() {
                    tracing::warn!(column = %key, "base64 decimals without `scale`: every value of this column will be dead-lettered");
                }
            }
        }
        Ok(Pipeline {
            name,
            dlq_topic,
            source,
            sink,
            plugins,
            until_caught_up: ov.until_caught_up || pf.until_caught_up.unwrap_or(false),
            max_batch_records,
            max_batch_wait,
            batch_linger,
            consolidate: pf.batch.consolidate.unwrap_or(true),
            table_fillfactor,
            call_timeout,
            memory_limit_bytes: (memory_mib as usize) << 20,
            idle_timeout,
            hints: ColumnHints::new(pf.columns),
            keys: TableKeys::new(pf.keys),
            decimal_handling: pf.decimal_handling.unwrap_or_default(),
        })
    }
}

/// Whether the consumer's subscription (`topics`, anchored at the start as
/// the Kafka source anchors it) takes in `topic`.
pub fn topic_regex_matches(topics: &str, topic: &str) -> bool {
    let anchored = if topics.starts_with('^') {
        topics.to_string()
    } else {
        format!("^{topics}")
    };
    regex_lite::Regex::new(&anchored).is_ok_and(|re| re.is_match(topic))
}

/// `file:PATH` or `kafka://HOST:PORT[,HOST:PORT...]` (topics and group come
/// from their own options).
pub fn parse_source(s: &str, base: &Path) -> anyhow::Result<SourceSpec> {
    if let Some(brokers) = s.strip_prefix("kafka://") {
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
            bail!("source `{s}`: expected kafka://HOST:PORT[,HOST:PORT]");
        }
        return Ok(SourceSpec::Kafka {
            brokers: brokers.to_string(),
            topics: String::new(),
            group: String::new(),
            instance_id: String::new(),
        });
    }
    match s.split_once(':') {
        Some(("file", path)) if !path.is_empty() => Ok(SourceSpec::File(base.join(path))),
        _ => bail!("unsupported source `{s}`: expected file:PATH (kcat -C -J JSON lines) or kafka://HOST:PORT"),
    }
}

/// `sqlite:PATH`, `sqlite://PATH` or `sqlite:///ABS/PATH` (sqlx URL forms);
/// `postgres://USER:PASSWORD@HOST:PORT/DB`; `mysql://…` or `mariadb://…`.
pub fn parse_sink(s: &str, base: &Path) -> anyhow::Result<SinkSpec> {
    for (scheme, as_scheme) in [
        ("postgres://", "postgres://"),
        ("postgresql://", "postgres://"),
        ("mysql://", "mysql://"),
        ("mariadb://", "mysql://"),
    ] {
        if let Some(rest) = s.strip_prefix(scheme) {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            if host.is_empty() || host.starts_with('/') {
                bail!(
                    "sink `{}`: no host; expected {scheme}USER:PASSWORD@HOST:PORT/DATABASE",
                    redact_password(s)
                );
            }
            return Ok(SinkSpec::Server {
                url: format!("{as_scheme}{rest}"),
            });
        }
    }
    let Some(rest) = s.strip_prefix("sqlite:") else {
        bail!("unsupported sink `{}`: expected sqlite:PATH, postgres://USER:PASSWORD@HOST/DB or mysql://USER:PASSWORD@HOST/DB", redact_password(s));
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        bail!("sink `{s}`: give a database file path (sqlite:PATH)");
    }
    let path = sqlite_file(&base.join(path))
        .with_context(|| format!("sink `{s}`: resolving the database file"))?;
    let url = sqlite_url(&path).with_context(|| format!("sink `{s}`"))?;
    Ok(SinkSpec::Sqlite { url, path })
}

/// The database file as an absolute path without `.`/`..` segments: a
/// relative path from a pipeline file or the command line must not reach
/// sqlx as a relative URL, whose first segment would be read as a host. The
/// directory is resolved on disk when it exists (so `..` after a symlink
/// means what the shell means), else lexically; the file itself need not exist.
fn sqlite_file(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    // `file_name` is None for a path ending in `..` (or the root).
    let Some(file) = absolute.file_name() else {
        bail!("{} names a directory, not a database file", path.display());
    };
    if let Some(dir) = absolute
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
    {
        return Ok(dir.join(file));
    }
    let mut clean = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    Ok(clean)
}

/// `sqlite:///ABS/PATH?mode=rwc` with every byte that URL parsing could
/// change (space, `%`, `?`, `#`, non-ASCII…) percent-encoded; sqlx decodes
/// the path back to the same text.
fn sqlite_url(path: &Path) -> anyhow::Result<String> {
    let Some(text) = path.to_str() else {
        bail!(
            "the database path {} is not valid UTF-8, which sqlx's SQLite URLs require",
            path.display()
        );
    };
    let mut url = String::from("sqlite://");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

/// Human durations: `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration like 250ms, 10s, 5m"))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).context("duration too long")?),
        "h" => Duration::from_secs(n.checked_mul(3600).context("duration too long")?),
        other => bail!("`{s}`: unknown unit `{other}` (use ms, s, m or h)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Pipeline> {
        let pf: PipelineFile = toml::from_str(text)?;
        Pipeline::from_parts(pf, Overrides::default(), Path::new("/base"))
    }

    #[test]
    fn full_file() {
        let p = parse(
            r#"
            name = "demo"
            source = "file:events.jsonl"
            sink = "sqlite:out.db"
            plugins = "plugins"
            [batch]
            max_records = 100
            max_wait = "50ms"
            linger = "20ms"
            consolidate = false
            [tables]
            fillfactor = 70
            [columns.orders]
            amount = { type = "decimal", scale = 2 }
            placed_at = { type = "local-timestamp", unit = "us" }
            "#,
        )
        .unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.source, SourceSpec::File("/base/events.jsonl".into()));
        assert_eq!(p.plugins, PathBuf::from("/base/plugins"));
        assert_eq!(p.max_batch_wait, Duration::from_millis(50));
        assert_eq!(p.batch_linger, Duration::from_millis(20));
        assert!(!p.consolidate);
        assert_eq!(p.table_fillfactor, Some(70));
        for bad in ["9", "101", "300", "-1"] {
            let e = parse(&format!("source = \"file:e\"\nsink = \"sqlite:o.db\"\nplugins = \"p\"\n[tables]\nfillfactor = {bad}\n"))
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(e.contains("tables.fillfactor") && e.contains(bad), "{e}");
        }
        let e = parse("source = \"file:e\"\nsink = \"sqlite:o.db\"\nplugins = \"p\"\n[batch]\nmax_wait = \"50ms\"\nlinger = \"1s\"\n")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(e.contains("batch.linger"), "{e}");
        let h = p.hints.for_topic("pg.public.orders").unwrap();
        assert_eq!(h["amount"].scale, Some(2));
    }

    #[test]
    fn unknown_key_is_named_with_position() {
        let err = toml::from_str::<PipelineFile>("sorce = \"file:x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sorce") && err.contains("line 1"), "{err}");
        let err =
            toml::from_str::<PipelineFile>("[columns.t]\nx = { type = \"decimal\", scael = 2 }\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("scael"), "{err}");
    }

    #[test]
    fn misplaced_hint_options_are_named() {
        let err = parse(
            "source=\"file:a\"\nsink=\"sqlite:b\"\nplugins=\"p\"\n[columns.t]\nx = { type = \"text\", scale = 2 }\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("columns.t.x.scale"), "{err:#}");
    }

    #[test]
    fn sink_urls() {
        let base = Path::new("/nonexistent-base");
        assert_eq!(
            parse_sink("sqlite:out.db", base).unwrap(),
            SinkSpec::Sqlite {
                url: "sqlite:///nonexistent-base/out.db?mode=rwc".into(),
                path: "/nonexistent-base/out.db".into()
            }
        );
        assert_eq!(
            parse_sink("mariadb://u:secret@db:3306/sink", base)
                .unwrap()
                .url(),
            "mysql://u:secret@db:3306/sink"
        );
        let pg = parse_sink("postgresql://u:secret@db/sink", base).unwrap();
        assert_eq!(pg.url(), "postgres://u:secret@db/sink");
        assert_eq!(format!("{pg:?}"), "postgres://u:***@db/sink");
        assert!(parse_sink("postgres://", base).is_err());
        assert!(
            matches!(parse_sink("sqlite:///tmp/x.db", base).unwrap(), SinkSpec::Sqlite { path, .. } if path == Path::new("/tmp/x.db"))
        );
        assert!(parse_source("kafka://x", base).is_err(), "no port");
        assert!(
            matches!(parse_source("kafka://a:9092,b:9092", base).unwrap(), SourceSpec::Kafka { brokers, .. } if brokers == "a:9092,b:9092")
        );
    }

    /// Relative paths (from a pipeline file's folder or the working
    /// directory), `..`, spaces, URL syntax and non-ASCII names all open the
    /// file they name, through sqlx's own URL parsing.
    #[tokio::test]
    async fn relative_sqlite_paths_open_the_file_they_name() {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let pipeline_dir = root.join("pipelines");
        std::fs::create_dir_all(&pipeline_dir).unwrap();
        std::fs::create_dir_all(root.join("data dir/ünï 💾")).unwrap();
        for (sink, base, file) in [
            (
                "sqlite:../data dir/a.db",
                pipeline_dir.as_path(),
                "data dir/a.db",
            ),
            (
                "sqlite://../data dir/ünï 💾/b #1?%20.db",
                pipeline_dir.as_path(),
                "data dir/ünï 💾/b #1",
            ),
            (
                "sqlite:./pipelines/../data dir/c%41.db",
                root.as_path(),
                "data dir/c%41.db",
            ),
            (
                "sqlite:pipelines/./../data dir/ünï 💾/d.db",
                root.as_path(),
                "data dir/ünï 💾/d.db",
            ),
        ] {
            let spec = parse_sink(sink, base).unwrap();
            let want = root.join(file);
            let SinkSpec::Sqlite { url, path } = &spec else {
                panic!("{sink}: not SQLite")
            };
            assert_eq!(path, &want, "{sink}");
            assert!(
                spec.shown().contains(&want.display().to_string()),
                "{}",
                spec.shown()
            );
            let conn = sqlx::AnyConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("{sink} → {url}: {e}"));
            conn.close().await.unwrap();
            assert!(
                want.is_file(),
                "{sink}: {url} did not create {}",
                want.display()
            );
        }
        // a relative path without a base resolves against the working directory
        let spec = parse_sink("sqlite:x.db", Path::new("")).unwrap();
        let SinkSpec::Sqlite { path, .. } = spec else {
            panic!()
        };
        assert_eq!(
            path,
            std::env::current_dir()
                .unwrap()
                .canonicalize()
                .unwrap()
                .join("x.db")
        );
    }

    #[test]
    fn kafka_source_that_would_read_its_own_dlq_is_refused() {
        let kafka = |extra: &str| {
            parse(&format!(
                "name=\"orders\"\nsource=\"kafka://k:9092\"\nsink=\"sqlite:b\"\nplugins=\"p\"\n{extra}"
            ))
        };
        let err = kafka("topics=\".*\"").unwrap_err();
        assert!(format!("{err:#}").contains("orders.dlq"), "{err:#}");
        assert!(
            kafka("topics=\"ord\"").is_err(),
            "anchored at the start only"
        );
        let ok = kafka("topics='^pg\\.public\\..*'\ninstance_id=\"b\"").unwrap();
        assert!(
            matches!(&ok.source, SourceSpec::Kafka { group, instance_id, .. } if group == "sluice-orders" && instance_id == "b")
        );
        assert_eq!(ok.dlq_topic.as_deref(), Some("orders.dlq"));
        assert!(
            kafka("topics=\".*\"\ndlq_topic=\"\"").is_ok(),
            "no DLQ topic"
        );
        assert!(kafka("topics=\"x\"\ninstance_id=\" \"").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
