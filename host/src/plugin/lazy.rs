//! Plugin calls made away from the processor (from the sink's commit: keyed
//! plugins, custom aggregates, projections of joined rows) and trap isolation
//! for batched calls, shared by every caller.

use std::collections::HashMap;
use std::sync::Arc;

use super::runtime::{Compiled, Instance};

/// A plugin version's instance, made on first use and dropped after a
/// failed call, so the next call gets a fresh one (a trap leaves an
/// instance unusable).
pub struct LazyInstance {
    code: Arc<Compiled>,
    tag: String,
    instance: Option<Instance>,
}

impl LazyInstance {
    pub fn new(code: Arc<Compiled>, tag: &str) -> Self {
        LazyInstance {
            code,
            tag: tag.to_string(),
            instance: None,
        }
    }

    /// The one kept under `key` in `map`, replaced when it is not an
    /// instance of `code` (the plugin was reloaded since).
    pub fn of<'a>(
        map: &'a mut HashMap<String, LazyInstance>,
        key: &str,
        code: &Arc<Compiled>,
        tag: &str,
    ) -> &'a mut LazyInstance {
        let entry = map
            .entry(key.to_string())
            .or_insert_with(|| LazyInstance::new(code.clone(), tag));
        if !Arc::ptr_eq(&entry.code, code) {
            *entry = LazyInstance::new(code.clone(), tag);
        }
        entry
    }

    /// Whether both are of the same plugin version.
    pub fn runs_same_code(&self, other: &LazyInstance) -> bool {
        Arc::ptr_eq(&self.code, &other.code)
    }

    /// Run `f` on the instance; an `Err` drops it.
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<T, String>,
    ) -> Result<T, String> {
        let instance = match &mut self.instance {
            Some(i) => i,
            None => self.instance.insert(
                self.code
                    .instantiate(&self.tag)
                    .map_err(|e| format!("instantiating the plugin: {e:#}"))?,
            ),
        };
        let out = f(instance);
        if out.is_err() {
            self.instance = None;
        }
        out
    }
}

/// One result per item of a batched call; when the call over all of them
/// fails (a trap), each item is tried alone, so only the poison item gets
/// the error. `call` must leave the plugin usable after a failure (a fresh
/// instance). `plugin` names it in the log.
pub fn isolating<I, T>(
    plugin: &str,
    items: &[I],
    mut call: impl FnMut(&[I]) -> Result<Vec<Result<T, String>>, String>,
) -> Vec<Result<T, String>> {
    if items.is_empty() {
        return Vec::new();
    }
    match call(items) {
        Ok(all) => all,
        Err(trap) if items.len() == 1 => vec![Err(trap)],
        Err(trap) => {
            tracing::warn!(
                plugin,
                items = items.len(),
                "{trap}; calling item by item to isolate the poison one"
            );
            items
                .iter()
                .map(|item| match call(std::slice::from_ref(item)) {
                    Ok(mut one) => one
                        .pop()
                        .unwrap_or_else(|| Err("the plugin returned no answer".into())),
                    Err(trap) => Err(trap),
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_batch_is_retried_item_by_item() {
        let mut calls = 0;
        let out = isolating("p", &[1, 2, 3], |items: &[i32]| {
            calls += 1;
            if items.contains(&2) {
                return Err("trap".into());
            }
            Ok(items.iter().map(|i| Ok(i * 10)).collect())
        });
        assert_eq!(out, vec![Ok(10), Err("trap".to_string()), Ok(30)]);
        assert_eq!(calls, 4);
        let out = isolating("p", &[1, 3], |items: &[i32]| {
            Ok::<_, String>(items.iter().map(|i| Ok(i * 10)).collect())
        });
        assert_eq!(out, vec![Ok(10), Ok(30)]);
    }
}
