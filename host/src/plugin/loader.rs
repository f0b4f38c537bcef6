//! Loading plugins from the plugin folder, at start and on change. Startup and
//! hot reload run the same `load_file`; the watcher compiles and describes off
//! the hot path and hands finished plugins to the processor, which swaps them
//! in at a batch boundary. A file that fails to load is rejected with a log
//! line and the previous version keeps running.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::runtime::Runtime;
use super::set::LoadedPlugin;

/// A change to the plugin set, applied by the processor between batches.
pub enum PluginUpdate {
    Install(Box<LoadedPlugin>),
    Remove(String),
}

/// Quiet time after the last file event before a file is (re)loaded, so a
/// file still being written is not compiled half-way.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// How long a removed plugin file must stay gone before the plugin is unloaded.
const REMOVAL_GRACE: Duration = Duration::from_secs(2);

fn plugin_id(path: &Path) -> Option<String> {
    if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
        return None;
    }
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.starts_with('.'))
        .map(str::to_string)
}

/// Compile, instantiate and describe one `.wasm` file.
pub fn load_file(runtime: &Arc<Runtime>, path: &Path) -> anyhow::Result<LoadedPlugin> {
    let id = plugin_id(path).with_context(|| format!("{} is not a .wasm file", path.display()))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = hex(&Sha256::digest(&bytes));
    let started = Instant::now();
    let compiled = runtime.compile_bytes(&bytes)?;
    let plugin = LoadedPlugin::new(&id, hash, &compiled)?;
    tracing::info!(
        plugin = %plugin.info.name,
        version = %plugin.info.version,
        file = %path.display(),
        tables = %plugin.info.tables.join(","),
        ms = started.elapsed().as_millis() as u64,
        "plugin loaded"
    );
    Ok(plugin)
}

/// Content hashes of the loaded files by plugin id, shared by the initial scan
/// and the watcher so an unchanged file is never reloaded.
pub type Hashes = Arc<Mutex<HashMap<String, String>>>;

fn lock(h: &Mutex<HashMap<String, String>>) -> MutexGuard<'_, HashMap<String, String>> {
    h.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every `.wasm` file in the folder, sorted.
pub fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading plugin folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| plugin_id(p).is_some() && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Files that failed to load, with why.
pub type Rejected = Vec<(PathBuf, anyhow::Error)>;

/// Load every plugin in the folder; failures are logged and returned.
pub fn load_dir(
    runtime: &Arc<Runtime>,
    dir: &Path,
    hashes: &Hashes,
) -> anyhow::Result<(Vec<LoadedPlugin>, Rejected)> {
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    for path in list_dir(dir)? {
        match load_file(runtime, &path) {
            Ok(p) => {
                lock(hashes).insert(p.id.clone(), p.hash.clone());
                out.push(p)
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "plugin rejected: {e:#}");
                rejected.push((path, e));
            }
        }
    }
    Ok((out, rejected))
}

/// Watches the folder; returns the watcher (keep it alive) after spawning the
/// thread that turns debounced file events into [`PluginUpdate`]s.
pub fn watch(
    runtime: Arc<Runtime>,
    dir: &Path,
    hashes: Hashes,
    updates: mpsc::Sender<PluginUpdate>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher =
        notify::recommended_watcher(tx).context("starting the plugin folder watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    std::thread::Builder::new()
        .name("sluice-reload".into())
        .spawn(move || reload_loop(runtime, rx, hashes, updates))?;
    Ok(watcher)
}

fn reload_loop(
    runtime: Arc<Runtime>,
    rx: mpsc::Receiver<notify::Result<notify::Event>>,
    hashes: Hashes,
    updates: mpsc::Sender<PluginUpdate>,
) {
    let mut dirty: HashSet<PathBuf> = HashSet::new();
    loop {
        let event = if dirty.is_empty() {
            match rx.recv() {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(DEBOUNCE) {
                Ok(e) => Some(e),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        match event {
            Some(Ok(ev)) => {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    continue;
                }
                dirty.extend(ev.paths.into_iter().filter(|p| plugin_id(p).is_some()));
            }
            Some(Err(e)) => tracing::warn!("plugin folder watch error: {e}"),
            None => {
                let mut dirty_again = Vec::new();
                for path in dirty.drain() {
                    let Some(id) = plugin_id(&path) else { continue };
                    let update = if path.is_file() {
                        let same = std::fs::read(&path)
                            .map(|b| hex(&Sha256::digest(&b)))
                            .ok()
                            .filter(|h| lock(&hashes).get(&id) == Some(h));
                        if same.is_some() {
                            continue;
                        }
                        match load_file(&runtime, &path) {
                            Ok(p) => {
                                lock(&hashes).insert(id, p.hash.clone());
                                PluginUpdate::Install(Box::new(p))
                            }
                            Err(e) => {
                                tracing::error!(file = %path.display(), "plugin rejected, the previous version keeps running: {e:#}");
                                continue;
                            }
                        }
                    } else {
                        if !lock(&hashes).contains_key(&id) {
                            continue;
                        }
                        // A replacement by delete-then-copy must not unload the
                        // plugin in between: wait, and unload only if the file
                        // is still gone (it then comes back as a new file).
                        std::thread::sleep(REMOVAL_GRACE);
                        if path.exists() {
                            dirty_again.push(path);
                            continue;
                        }
                        lock(&hashes).remove(&id);
                        tracing::warn!(file = %path.display(), "plugin file removed: unloading it; events of tables no other plugin handles are now counted as unrouted");
                        PluginUpdate::Remove(id)
                    };
                    if updates.send(update).is_err() {
                        return;
                    }
                }
                dirty.extend(dirty_again);
            }
        }
    }
}
