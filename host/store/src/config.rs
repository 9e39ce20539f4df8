//! Configuration: the per-store `user_config.json` and the process-wide settings read from the
//! environment variables of the design tvs replaces.
//!
//! Invariants: a store's dims, metric and scalar kind are fixed when it is created and never
//! change afterwards; every bad environment value is reported with the variable's name.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Distance metric of a store. Scores returned by search follow FAISS/LangChain conventions
/// (see [`crate::store::Hit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine distance `1 - cos(a, b)`.
    Cos,
    /// Inner product distance `1 - a·b`.
    Ip,
    /// Squared Euclidean distance.
    L2,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cos" | "cosine" => Ok(Metric::Cos),
            "ip" | "dot" => Ok(Metric::Ip),
            "l2" | "l2sq" | "euclidean" => Ok(Metric::L2),
            other => Err(format!("unknown metric {other:?}: expected cos, ip or l2")),
        }
    }
}

/// How the HNSW index stores vector components. The document log always keeps full f32, and a
/// graph that quantises (f16, i8) keeps the f32 rows beside it to re-rank its candidates exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarKind {
    F32,
    F16,
    /// The default: the graph walks i8 codes (a quarter of the bytes per distance) and the
    /// exact re-rank keeps recall where f32 has it; 2.2x f32's QPS at equal recall here.
    #[default]
    I8,
}

impl std::str::FromStr for ScalarKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(ScalarKind::F32),
            "f16" => Ok(ScalarKind::F16),
            "i8" => Ok(ScalarKind::I8),
            other => Err(format!("unknown scalar kind {other:?}: expected f32, f16 or i8")),
        }
    }
}

/// Live documents below which a store is served by exact scan; at or above it an HNSW graph is
/// built in the background. Exact scan of 10k × 384 f32 takes about a millisecond.
pub const DEFAULT_HNSW_THRESHOLD: usize = 10_000;

/// Contents of `config/user_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Vector dimensionality; every vector of the store has exactly this many components.
    pub dims: usize,
    pub metric: Metric,
    /// Storage of vectors inside the HNSW graph.
    pub scalar: ScalarKind,
    /// Canonical name of the embedding model whose vectors this store holds (`none`: client
    /// vectors); see `model::canonical_model_name`.
    pub embedding_model: String,
    /// Live document count at which search switches from exact scan to HNSW.
    #[serde(default = "default_hnsw_threshold")]
    pub hnsw_threshold: usize,
    /// HNSW search breadth (usearch "expansion"): higher is slower with better recall.
    /// [`EF_SEARCH_CALIBRATED`] (the default) lets each graph choose its own when it is built,
    /// the narrowest that finds [`RECALL_TARGET`] of the true top 10 of sampled queries.
    #[serde(default = "default_ef_search")]
    pub ef_search: usize,
    /// Optional quota on live documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<u64>,
    /// Optional quota on stored bytes: the size of the tenant's document log, which holds every
    /// document whole (vector, text, metadata). Deleted and replaced documents count until the
    /// log is compacted; a write that would pass the quota compacts first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Parts an HNSW graph is built in, each searched on its own thread; [`GRAPH_PARTS_AUTO`]
    /// (the default) splits graphs of `vectors::SPLIT_FROM` rows in two on machines with two
    /// cores or more. 1 keeps every search on one core (more concurrent searches per core).
    #[serde(default, skip_serializing_if = "is_auto_parts")]
    pub graph_parts: usize,
}

/// `graph_parts` meaning "chosen from the graph's size and the machine".
pub const GRAPH_PARTS_AUTO: usize = 0;
/// Most parts a graph may be built in.
pub const MAX_GRAPH_PARTS: usize = 8;

fn is_auto_parts(parts: &usize) -> bool {
    *parts == GRAPH_PARTS_AUTO
}

fn default_hnsw_threshold() -> usize {
    DEFAULT_HNSW_THRESHOLD
}

/// HNSW search breadth of a graph not calibrated (built before calibration existed, or too small
/// to sample): recall@10 about 0.90 on 200k embedding-like 384-d vectors here.
pub const DEFAULT_EF_SEARCH: usize = 128;
/// `ef_search` meaning "calibrated per graph" (the default for new stores).
pub const EF_SEARCH_CALIBRATED: usize = 0;
/// The recall@10 a calibrated graph is tuned to, measured on held-out vectors.
pub const RECALL_TARGET: f32 = 0.95;

fn default_ef_search() -> usize {
    DEFAULT_EF_SEARCH
}

/// Largest accepted vector dimensionality.
pub const MAX_DIMS: usize = 16_384;

impl StoreConfig {
    pub fn new(dims: usize, metric: Metric, scalar: ScalarKind, embedding_model: &str) -> Self {
        Self {
            dims,
            metric,
            scalar,
            embedding_model: tvs_guest_core::models::canonical_model_name(embedding_model),
            hnsw_threshold: DEFAULT_HNSW_THRESHOLD,
            ef_search: EF_SEARCH_CALIBRATED,
            max_documents: None,
            max_bytes: None,
            graph_parts: GRAPH_PARTS_AUTO,
        }
    }

    /// Checks values a hand-edited or hostile config file could get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.dims == 0 || self.dims > MAX_DIMS {
            return Err(format!("dims must be between 1 and {MAX_DIMS}, got {}", self.dims));
        }
        if self.ef_search > 4096 {
            return Err(format!(
                "ef_search must be between 1 and 4096, or 0 to calibrate it, got {}",
                self.ef_search
            ));
        }
        if self.graph_parts > MAX_GRAPH_PARTS {
            return Err(format!(
                "graph_parts must be between 1 and {MAX_GRAPH_PARTS}, or 0 to choose by size, got {}",
                self.graph_parts
            ));
        }
        if self.embedding_model.is_empty() {
            return Err("embedding_model must not be empty (use \"none\" for client vectors)".into());
        }
        tvs_guest_core::models::check_model_dims(&self.embedding_model, self.dims)?;
        Ok(())
    }

    /// `validate`, and also that the model is one tvs can embed with: checked only when a
    /// store is made, so a store written under another name by an older tvs still opens.
    pub fn validate_new(&self) -> Result<(), String> {
        self.validate()?;
        tvs_guest_core::models::check_known_model(&self.embedding_model)
    }
}

/// Process-wide settings, from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `TVS_DATA_DIR`: root of the tenant directories.
    pub data_dir: PathBuf,
    /// `VECTOR_STORE_FOLDER`: the single-tenant store used when no tenant is given.
    pub vector_store_folder: PathBuf,
    /// `VECTOR_STORE_POOL_SIZE`: open stores kept in the pool.
    pub pool_size: usize,
    /// `VECTOR_STORE_TTL_SECONDS`: idle time after which an open store is dropped.
    pub ttl: Duration,
    /// `TVS_POOL_MAX_BYTES`: optional bound on the estimated memory of open stores.
    pub pool_max_bytes: Option<u64>,
    /// `DEFAULT_TOP_K`: k when a search does not say.
    pub default_top_k: usize,
    /// `EMBEDDING_MODEL`: the model new tenants get unless told otherwise.
    pub embedding_model: String,
}

/// A bad environment value, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct SettingsError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// The optional TOML configuration file (`tvs --config FILE`, or `TVS_CONFIG`). Environment
/// variables override it, command-line flags override both.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub vector_store_folder: Option<PathBuf>,
    pub pool_size: Option<usize>,
    pub ttl_seconds: Option<u64>,
    pub pool_max_bytes: Option<u64>,
    pub default_top_k: Option<usize>,
    pub embedding_model: Option<String>,
    #[serde(default)]
    pub serve: ServeFile,
}

/// The `[serve]` table of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub addr: Option<std::net::SocketAddr>,
    pub max_body_bytes: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub guest_deadline_secs: Option<u64>,
    pub guest_memory_mib: Option<usize>,
    pub max_in_flight: Option<usize>,
}

/// A configuration file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("configuration file {path}: {reason}")]
pub struct ConfigFileError {
    pub path: PathBuf,
    pub reason: String,
}

impl ConfigFile {
    /// The file's value for an environment variable's setting, as text.
    fn value_of(&self, variable: &str) -> Option<String> {
        match variable {
            "TVS_DATA_DIR" => self.data_dir.as_ref().map(|p| p.display().to_string()),
            "VECTOR_STORE_FOLDER" => self.vector_store_folder.as_ref().map(|p| p.display().to_string()),
            "VECTOR_STORE_POOL_SIZE" => self.pool_size.map(|v| v.to_string()),
            "VECTOR_STORE_TTL_SECONDS" => self.ttl_seconds.map(|v| v.to_string()),
            "TVS_POOL_MAX_BYTES" => self.pool_max_bytes.map(|v| v.to_string()),
            "DEFAULT_TOP_K" => self.default_top_k.map(|v| v.to_string()),
            "EMBEDDING_MODEL" => self.embedding_model.clone(),
            _ => None,
        }
    }

    /// Reads and parses a TOML configuration file; unknown keys are errors that name them.
    pub fn read(path: &std::path::Path) -> Result<ConfigFile, ConfigFileError> {
        let err = |reason: String| ConfigFileError {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_owned()))
    }
}

/// Embedding model used when `EMBEDDING_MODEL` is unset (the old stack's default).
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("user_data"),
            vector_store_folder: PathBuf::from("vector_store_data"),
            pool_size: 10,
            ttl: Duration::from_secs(3600),
            pool_max_bytes: None,
            default_top_k: 5,
            embedding_model: DEFAULT_EMBEDDING_MODEL.to_owned(),
        }
    }
}

impl Settings {
    /// The single-tenant store used when no tenant is given (`VECTOR_STORE_FOLDER`), as the
    /// factory of the design tvs replaces did.
    pub fn default_store_dir(&self) -> crate::tenant::StoreDir {
        crate::tenant::StoreDir::new(&self.vector_store_folder)
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the process environment, falling back to `file` for variables that are unset.
    pub fn from_env_and_file(file: &ConfigFile) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok().or_else(|| file.value_of(name)))
    }

    /// Reads settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut settings = Settings::default();
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("TVS_DATA_DIR") {
            settings.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("VECTOR_STORE_FOLDER") {
            settings.vector_store_folder = PathBuf::from(v);
        }
        if let Some(v) = get("VECTOR_STORE_POOL_SIZE") {
            settings.pool_size = parse_positive("VECTOR_STORE_POOL_SIZE", &v)?;
        }
        if let Some(v) = get("VECTOR_STORE_TTL_SECONDS") {
            let secs = parse_positive("VECTOR_STORE_TTL_SECONDS", &v)?;
            settings.ttl = Duration::from_secs(secs as u64);
        }
        if let Some(v) = get("TVS_POOL_MAX_BYTES") {
            settings.pool_max_bytes = Some(parse_positive("TVS_POOL_MAX_BYTES", &v)? as u64);
        }
        if let Some(v) = get("DEFAULT_TOP_K") {
            settings.default_top_k = parse_positive("DEFAULT_TOP_K", &v)?;
        }
        if let Some(v) = get("EMBEDDING_MODEL") {
            let model = tvs_guest_core::models::canonical_model_name(&v);
            tvs_guest_core::models::check_known_model(&model).map_err(|reason| SettingsError {
                name: "EMBEDDING_MODEL",
                value: v.clone(),
                reason,
            })?;
            settings.embedding_model = model;
        }
        Ok(settings)
    }
}

fn parse_positive(name: &'static str, value: &str) -> Result<usize, SettingsError> {
    let err = |reason: &str| SettingsError {
        name,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| err("expected a positive whole number"))?;
    if n == 0 {
        return Err(err("must be at least 1"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings_from(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_old_factory() {
        let s = settings_from(&[]).expect("defaults");
        assert_eq!(s.pool_size, 10);
        assert_eq!(s.ttl, Duration::from_secs(3600));
        assert_eq!(s.default_top_k, 5);
        assert_eq!(s.vector_store_folder, PathBuf::from("vector_store_data"));
        assert_eq!(s.data_dir, PathBuf::from("user_data"));
    }

    #[test]
    fn env_values_are_honoured() {
        let s = settings_from(&[
            ("VECTOR_STORE_POOL_SIZE", "3"),
            ("VECTOR_STORE_TTL_SECONDS", "60"),
            ("DEFAULT_TOP_K", "7"),
            ("VECTOR_STORE_FOLDER", "legacy"),
            ("TVS_DATA_DIR", "/srv/tvs"),
            ("EMBEDDING_MODEL", "none"),
        ])
        .expect("valid");
        assert_eq!((s.pool_size, s.ttl.as_secs(), s.default_top_k), (3, 60, 7));
        assert_eq!(s.vector_store_folder, PathBuf::from("legacy"));
        assert_eq!(s.data_dir, PathBuf::from("/srv/tvs"));
        assert_eq!(s.embedding_model, "none");
    }

    #[test]
    fn embedding_model_takes_any_spelling_and_refuses_unknown_models() {
        let s = settings_from(&[("EMBEDDING_MODEL", "sentence-transformers/all-minilm-l6-v2")]).expect("valid");
        assert_eq!(s.embedding_model, "all-MiniLM-L6-v2");
        let err = settings_from(&[("EMBEDDING_MODEL", "all-mpnet-base-v2")]).expect_err("unknown");
        assert_eq!(err.name, "EMBEDDING_MODEL");
        assert!(err.reason.contains("unknown embedding model"), "{}", err.reason);
    }

    #[test]
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        let file: ConfigFile =
            toml::from_str("pool_size = 4\ndefault_top_k = 9\n[serve]\nmax_in_flight = 3\n").expect("toml");
        let map: HashMap<String, String> = [("DEFAULT_TOP_K".to_string(), "2".to_string())].into_iter().collect();
        let s = Settings::from_lookup(|k| map.get(k).cloned().or_else(|| file.value_of(k))).expect("valid");
        assert_eq!((s.pool_size, s.default_top_k, s.ttl.as_secs()), (4, 2, 3600));
        assert_eq!(file.serve.max_in_flight, Some(3));
        let unknown = toml::from_str::<ConfigFile>("pool_sise = 4\n").expect_err("unknown key");
        assert!(unknown.to_string().contains("pool_sise"), "{unknown}");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("VECTOR_STORE_POOL_SIZE", "ten"),
            ("VECTOR_STORE_POOL_SIZE", "0"),
            ("VECTOR_STORE_TTL_SECONDS", "-5"),
            ("DEFAULT_TOP_K", "1.5"),
        ] {
            let err = settings_from(&[(name, value)]).expect_err(value);
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
