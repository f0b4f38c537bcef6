//! The Wasm engine and plugin instances: compile once, instantiate cheaply from
//! an `InstancePre`, call with a deadline (epoch interruption) and a memory cap.
//! WASI is linked with an empty context: no preopened files, no network, no
//! environment, no arguments; clocks and random numbers are the WASI defaults
//! (so a plugin that reads them is not deterministic). Guest stdout/stderr go
//! to the host log.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Call, ChangeOutcome, PluginBindings, PluginInfo, PluginPre};
use crate::model;
use crate::operators::lookup::LookupAccess;
use crate::operators::{Projection, StateUpdate};

/// wasmtime 48 has its own error type (not `std::error::Error`).
fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:#}")
}

/// Where compiled plugins are cached, keyed by the component's bytes and the
/// compiler settings: `SLUICE_CACHE_DIR` (empty disables), else
/// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`. Large interpreter guests
/// (Python, JS) compile in seconds and load from the cache in milliseconds.
fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE_DIR") {
        return (!dir.is_empty()).then(|| dir.into());
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&xdg).join("sluice"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/sluice"))
}

/// Run plugin calls from async code. WASI's synchronous bindings (a guest
/// writing to stderr, say) block on the ambient tokio runtime, which panics
/// on a runtime worker thread; on the multi-threaded runtime the closure
/// leaves the runtime for the call (`block_in_place`), elsewhere it runs on
/// a thread of its own.
pub fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// `work` (as [`off_runtime`]) on a thread of its own while `io` runs on
/// this one: the sink's CPU work overlapping a database round trip, on two
/// cores instead of one after the other. On a runtime that cannot block in
/// place (current-thread: tests), `io` runs first, then `work`.
pub async fn overlapped<R: Send, T>(
    work: impl FnOnce() -> R + Send,
    io: impl std::future::Future<Output = T>,
) -> (T, R) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    // in the runtime's context, as `off_runtime`'s work is:
                    // WASI's blocking calls then use this runtime, not one of
                    // their own
                    let worker = s.spawn(|| {
                        let _context = h.enter();
                        work()
                    });
                    let done = h.block_on(io);
                    match worker.join() {
                        Ok(r) => (done, r),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                })
            })
        }
        _ => {
            let done = io.await;
            (done, off_runtime(work))
        }
    }
}

/// How often the epoch ticks; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin instance.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub call_timeout: Duration,
    pub memory_bytes: usize,
}

/// The process-wide engine, its epoch ticker and the shared linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
}

impl Runtime {
    pub fn new(limits: Limits) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        if let Some(dir) = cache_dir() {
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(&dir);
            match wasmtime::Cache::new(cc) {
                Ok(cache) => {
                    config.cache(Some(cache));
                    tracing::debug!(dir = %dir.display(), "compiled-plugin cache");
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "compiled-plugin cache disabled: {e:#}")
                }
            }
        }
        let engine = Engine::new(&config).map_err(wasm_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(wasm_err)?;
        bindings::add_to_linker(&mut linker).map_err(wasm_err)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
        }))
    }

    /// Compile a component file and prepare it for instantiation.
    pub fn compile(self: &Arc<Self>, path: &Path) -> anyhow::Result<Arc<Compiled>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.compile_bytes(&bytes)
            .with_context(|| format!("loading plugin {}", path.display()))
    }

    /// Compile component bytes and bind the newest plugin interface they export.
    pub fn compile_bytes(self: &Arc<Self>, bytes: &[u8]) -> anyhow::Result<Arc<Compiled>> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow!("not a valid WebAssembly component: {e}"))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        if !bindings::PLUGIN_INTERFACES
            .iter()
            .any(|i| exports.iter().any(|n| n == i))
        {
            return Err(anyhow!(
                "component does not export {} (it exports: {}); rebuild it against this host's WIT",
                bindings::PLUGIN_INTERFACES
                    .iter()
                    .map(|i| format!("`{i}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                }
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("plugin imports something this host does not offer: {e}"))?;
        let pre = match PluginPre::probe(&exports, pre) {
            Some(p) => p.map_err(wasm_err)?,
            None => return Err(anyhow!("no plugin interface found")),
        };
        Ok(Arc::new(Compiled {
            runtime: self.clone(),
            pre,
        }))
    }
}

/// A compiled, linked plugin from which instances are made.
pub struct Compiled {
    runtime: Arc<Runtime>,
    pre: PluginPre,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

impl Compiled {
    /// A fresh instance with its own store, limits and log tag.
    pub fn instantiate(self: &Arc<Self>, tag: &str) -> anyhow::Result<Instance> {
        let stderr = LogStream::new(tag, "stderr");
        let stdout = LogStream::new(tag, "stdout");
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.runtime.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.runtime.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits,
                tag: tag.into(),
                lookups: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self.pre.instantiate(&mut store).map_err(wasm_err)?;
        Ok(Instance {
            compiled: self.clone(),
            store,
            bindings,
            stderr,
        })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.runtime.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// A live plugin instance. After a trap it must be replaced.
pub struct Instance {
    compiled: Arc<Compiled>,
    store: Store<HostState>,
    bindings: PluginBindings,
    stderr: LogStream,
}

impl Instance {
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    pub fn describe(&mut self) -> Result<PluginInfo, String> {
        self.call(|b, store| b.describe(store))
    }

    /// Call `process`; `Err` carries a trap explanation (the instance is
    /// then dead) or says how the answer was broken.
    pub fn process(
        &mut self,
        events: &[(&model::ChangeEvent, &model::RecordId)],
    ) -> Result<Vec<ChangeOutcome>, String> {
        self.call(|b, store| b.process(store, events))
    }

    /// Let `host.lookup` read these tables in the calls that follow.
    pub fn set_lookups(&mut self, access: LookupAccess) {
        self.store.data_mut().lookups = Some(access);
    }

    /// Call `process-keyed` (0.2 plugins with keyed state).
    pub fn process_keyed(
        &mut self,
        events: &[(&model::ChangeEvent, &model::RecordId)],
        states: &[(u32, Vec<u8>)],
    ) -> Result<bindings::KeyedAnswer, String> {
        self.call(|b, store| b.process_keyed(store, events, states))
    }

    /// Call `project` for aggregation `aggregation` (0.2 plugins).
    pub fn project(
        &mut self,
        aggregation: u32,
        source: &model::TableDesc,
        rows: &[&[model::Value]],
    ) -> Result<Vec<Result<Option<Projection>, String>>, String> {
        self.call(|b, store| b.project(store, aggregation, source, rows))
    }

    /// Fold rows into custom aggregate states.
    pub fn aggregate_apply(
        &mut self,
        aggregation: u32,
        measure: u32,
        updates: &[StateUpdate],
    ) -> Result<Vec<Result<Vec<u8>, String>>, String> {
        self.call(|b, store| b.aggregate_apply(store, aggregation, measure, updates))
    }

    /// Merge partial custom aggregate states, per group.
    pub fn aggregate_merge(
        &mut self,
        aggregation: u32,
        measure: u32,
        groups: &[Vec<Vec<u8>>],
    ) -> Result<Vec<Vec<u8>>, String> {
        self.call(|b, store| b.aggregate_merge(store, aggregation, measure, groups))
    }

    /// Output values of custom aggregate states.
    pub fn aggregate_finish(
        &mut self,
        aggregation: u32,
        measure: u32,
        states: &[Vec<u8>],
    ) -> Result<Vec<model::Value>, String> {
        self.call(|b, store| b.aggregate_finish(store, aggregation, measure, states))
    }

    /// One call under a fresh deadline; a trap's reason quotes only what
    /// this call wrote to stderr.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&PluginBindings, &mut Store<HostState>) -> Call<T>,
    ) -> Result<T, String> {
        self.store
            .set_epoch_deadline(self.compiled.deadline_ticks());
        self.stderr.clear_tail();
        match f(&self.bindings, &mut self.store) {
            Ok(answer) => answer,
            Err(e) => Err(self.trap_message(e)),
        }
    }

    fn trap_message(&self, err: wasmtime::Error) -> String {
        let limits = self.compiled.runtime.limits;
        let mut msg = match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => format!(
                "plugin exceeded its call deadline of {:?} (runaway code stopped by epoch interruption)",
                limits.call_timeout
            ),
            Some(trap) => format!("plugin trapped: {trap}"),
            None => format!("plugin failed: {}", err.root_cause()),
        };
        let text = format!("{err:?}");
        if text.contains("memory") && text.contains("limit")
            || text.contains("forcing trap when growing memory")
        {
            msg = format!(
                "plugin exceeded its memory limit of {} MiB: {msg}",
                limits.memory_bytes >> 20
            );
        }
        let tail = self.stderr.tail();
        if !tail.trim().is_empty() {
            msg.push_str("; guest stderr: ");
            msg.push_str(tail.trim());
        }
        msg
    }
}

/// Per-store host state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    tag: Arc<str>,
    /// The tables `host.lookup` reads (plugins that declare lookups, run in
    /// the sink's commit); `None` elsewhere.
    pub(crate) lookups: Option<LookupAccess>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// A guest's log line, tagged with the plugin.
    pub(super) fn log_line(&self, level: tracing::Level, message: &str) {
        let plugin = &*self.tag;
        match level {
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, "{message}"),
            _ => tracing::trace!(plugin, "{message}"),
        }
    }
}

/// Guest stdout/stderr: complete lines go to the host log tagged with the
/// plugin; the last few KiB are kept to explain a trap (a Rust panic prints
/// its message to stderr just before trapping).
#[derive(Clone)]
struct LogStream {
    tag: Arc<str>,
    stream: &'static str,
    state: Arc<Mutex<LogState>>,
}

#[derive(Default)]
struct LogState {
    line: Vec<u8>,
    tail: VecDeque<u8>,
}

const TAIL_BYTES: usize = 2048;
const MAX_LINE: usize = 8192;

impl LogStream {
    fn new(tag: &str, stream: &'static str) -> Self {
        LogStream {
            tag: tag.into(),
            stream,
            state: Arc::default(),
        }
    }

    fn write(&self, buf: &[u8]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for &b in buf {
            st.tail.push_back(b);
            if st.tail.len() > TAIL_BYTES {
                st.tail.pop_front();
            }
            if b == b'\n' || st.line.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&st.line).into_owned();
                st.line.clear();
                tracing::info!(plugin = &*self.tag, stream = self.stream, "{line}");
            } else {
                st.line.push(b);
            }
        }
    }

    fn clear_tail(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.tail.clear();
        }
    }

    fn tail(&self) -> String {
        match self.state.lock() {
            Ok(st) => {
                let bytes: Vec<u8> = st.tail.iter().copied().collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(_) => String::new(),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), wasmtime_wasi::p2::StreamError> {
        LogStream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), wasmtime_wasi::p2::StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, wasmtime_wasi::p2::StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        LogStream::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work and the I/O run at the same time: the I/O waits for what
    /// the work sends (run one after the other, this would never end); the
    /// work sees the runtime, as WASI's blocking calls need.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapped_runs_the_work_beside_the_io() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let work = move || {
            tx.send(7).unwrap();
            let in_runtime = tokio::runtime::Handle::try_current().is_ok();
            (std::thread::current().id(), in_runtime)
        };
        let io = async { rx.await.unwrap() + 1 };
        let here = std::thread::current().id();
        let run = overlapped(work, io);
        let (got, (worker, in_runtime)) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the I/O waited for work that never ran beside it");
        assert_eq!(got, 8);
        assert_ne!(worker, here, "the work ran on this thread");
        assert!(in_runtime, "the work ran outside the runtime's context");
    }

    /// Where the runtime cannot block in place, both still run.
    #[tokio::test(flavor = "current_thread")]
    async fn overlapped_runs_both_on_a_current_thread_runtime() {
        let (done, result) = overlapped(|| 2 + 2, async { "io" }).await;
        assert_eq!((done, result), ("io", 4));
    }
}
