//! tvs-embed: embedding models behind the guests' `embedder` import and `POST /v1/embeddings`. A tenant's
//! model is fixed in its `user_config.json`: `all-MiniLM-L6-v2` (the default, run in-process
//! with candle from the files [`crate::model`] manages), `openai:<model>` for any
//! OpenAI-compatible `/v1/embeddings` endpoint (`TVS_OPENAI_BASE_URL`, key from
//! `OPENAI_API_KEY`), or `none` (clients send vectors).
//!
//! Invariants: every vector handed back has the dimensions the caller asked for (a model that
//! returns anything else is an error, never a silently mixed collection); a model is loaded once
//! per process and shared; the local model runs each request on one thread, because on a
//! 2-core machine two threads per request were slower than one and starve concurrent requests.

pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use serde_json::json;

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    #[error("this tenant has no embedding model (it stores client vectors)")]
    NoModel,
    #[error("embedding model {0:?} is not available: {1}")]
    Unavailable(String, String),
    #[error("the embedding endpoint failed: {0}")]
    Endpoint(String),
    #[error("the embedding model returned {got} dimensions; this tenant stores {want}")]
    Dimensions { got: usize, want: usize },
}

/// A model that turns texts into vectors.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// One vector per text, in order, each of `dims` dimensions.
    fn embed(&self, texts: &[String], dims: usize) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// [`Self::embed`], plus the tokens the model read where its tokenizer is at hand (for
    /// OpenAI's `usage`), counted while embedding rather than by tokenizing again.
    fn embed_counted(&self, texts: &[String], dims: usize) -> Result<(Vec<Vec<f32>>, Option<usize>), EmbedError> {
        self.embed(texts, dims).map(|vectors| (vectors, None))
    }
}

/// A token id that `cl100k_base` does not have.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a cl100k_base token id")]
pub struct UnknownTokenId(pub u64);

/// The text behind token ids an OpenAI client sent instead of text. They are `cl100k_base` ids:
/// the encoding of OpenAI's embedding models, and what LangChain's `OpenAIEmbeddings` sends by
/// default (it splits texts into chunks of at most 8191 tokens, which tvs's own model then
/// tokenizes again). A chunk cut inside a multi-byte character decodes with U+FFFD there.
pub fn text_of_openai_tokens(ids: &[u64]) -> Result<String, UnknownTokenId> {
    let ranks = ids
        .iter()
        .map(|&id| u32::try_from(id).map_err(|_| UnknownTokenId(id)))
        .collect::<Result<Vec<u32>, _>>()?;
    // Built once per process, on first use (~0.2 s); servers that never see token ids never pay.
    let bytes = tiktoken_rs::cl100k_base_singleton()
        .decode_bytes(&ranks)
        .map_err(|e| UnknownTokenId(u64::from(e.token)))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The embedder for a tenant's configured model name, shared by every request that uses the
/// model (an HTTP endpoint keeps its connection pool across requests).
pub fn embedder_for(model: &str) -> Result<Arc<dyn Embedder>, EmbedError> {
    static SHARED: OnceLock<Mutex<HashMap<String, Arc<dyn Embedder>>>> = OnceLock::new();
    let shared = SHARED.get_or_init(Default::default);
    if let Some(embedder) = shared.lock().unwrap_or_else(|p| p.into_inner()).get(model) {
        return Ok(embedder.clone());
    }
    let embedder = new_embedder(model)?;
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(model.to_owned(), embedder.clone());
    Ok(embedder)
}

fn new_embedder(model: &str) -> Result<Arc<dyn Embedder>, EmbedError> {
    if let Some(name) = model.strip_prefix("openai:") {
        let base_url = std::env::var("TVS_OPENAI_BASE_URL").map_err(|_| {
            EmbedError::Unavailable(
                model.into(),
                "set TVS_OPENAI_BASE_URL to the endpoint's base URL".into(),
            )
        })?;
        return Ok(Arc::new(OpenAiEmbedder::new(
            name,
            &base_url,
            std::env::var("OPENAI_API_KEY").ok(),
        )));
    }
    if model == "none" {
        return Err(EmbedError::NoModel);
    }
    if tvs_guest_core::models::is_local_model(model) {
        let dir = model::model_dir();
        let embedder = LocalEmbedder::load(&dir).map_err(|e| EmbedError::Unavailable(model.into(), e.to_string()))?;
        return Ok(Arc::new(embedder));
    }
    Err(EmbedError::Unavailable(
        model.into(),
        format!(
            "unknown model; use {}, openai:<model> or none",
            tvs_guest_core::models::LOCAL_MODEL
        ),
    ))
}

/// all-MiniLM-L6-v2 in-process: BERT with mean pooling over the attention mask and L2
/// normalisation, as sentence-transformers computes it (max 256 tokens, batches padded to their
/// longest text).
pub struct LocalEmbedder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model", &tvs_guest_core::models::LOCAL_MODEL)
            .finish()
    }
}

/// sentence-transformers' `max_seq_length` for this model; longer texts are truncated.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass; the texts of a batch are sorted by length so padding stays small.
const LOCAL_BATCH: usize = 32;

/// Why the local model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Files(#[from] model::ModelError),
    #[error("the model files do not load: {0}; run `tvs model fetch` to fetch them again")]
    Invalid(String),
}

impl LocalEmbedder {
    /// Loads and verifies the model in `dir`.
    pub fn load(dir: &std::path::Path) -> Result<Self, LoadError> {
        let files = model::load_files(dir)?;
        let invalid = |e: &dyn std::fmt::Display| LoadError::Invalid(e.to_string());
        let config: BertConfig = serde_json::from_slice(&files.config_json).map_err(|e| invalid(&e))?;
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(&files.tokenizer_json).map_err(|e| invalid(&e))?;
        // The shipped tokenizer.json pads and truncates to a fixed 128; sentence-transformers
        // truncates at 256 and pads to the longest text of a batch, which `embed_batch` does.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| invalid(&e))?;
        tokenizer.with_padding(None);
        let weights = VarBuilder::from_buffered_safetensors(files.safetensors, DType::F32, &Device::Cpu)
            .map_err(|e| invalid(&e))?;
        let model = BertModel::load(weights, &config).map_err(|e| invalid(&e))?;
        Ok(LocalEmbedder { model, tokenizer })
    }

    /// Embeds texts on the calling thread's single-threaded inference pool.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_texts_counted(texts).map(|(vectors, _)| vectors)
    }

    /// [`Self::embed_texts`], plus the number of word pieces read.
    fn embed_texts_counted(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        thread_local! {
            static ONE_THREAD: Option<rayon::ThreadPool> =
                rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
        }
        ONE_THREAD.with(|pool| match pool {
            Some(pool) => pool.install(|| self.embed_here(texts)),
            None => self.embed_here(texts),
        })
    }

    /// Embeds texts on the threads of `pool`; the benchmark compares such pools with
    /// [`Self::embed_texts`], which serving uses.
    pub fn embed_texts_in(&self, pool: &rayon::ThreadPool, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        pool.install(|| self.embed_here(texts)).map(|(vectors, _)| vectors)
    }

    /// Word pieces the model reads for these texts (after truncation); a text that does not
    /// tokenize counts 0.
    pub fn count_tokens_of(&self, texts: &[String]) -> usize {
        texts
            .iter()
            .filter_map(|t| self.tokenizer.encode(t.as_str(), true).ok())
            .map(|e| e.get_ids().len())
            .sum()
    }

    /// Tokenizes, sorts by length so padded batches waste little, and runs the batches on
    /// whatever rayon pool this is called in. Returns the vectors and the word pieces read.
    fn embed_here(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_str(), true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmbedError::Endpoint(format!("tokenizing: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in order.chunks(LOCAL_BATCH) {
            let batch_encodings: Vec<&tokenizers::Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            let embedded = self
                .embed_batch(&batch_encodings)
                .map_err(|e| EmbedError::Endpoint(format!("running the model: {e}")))?;
            for (&i, vector) in batch.iter().zip(embedded) {
                vectors[i] = vector;
            }
        }
        let tokens = encodings.iter().map(|e| e.get_ids().len()).sum();
        Ok((vectors, tokens))
    }

    fn embed_batch(&self, encodings: &[&tokenizers::Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let rows = encodings.len();
        let mut ids = vec![0u32; rows * longest];
        let mut mask = vec![0u32; rows * longest];
        for (row, encoding) in encodings.iter().enumerate() {
            let start = row * longest;
            let tokens = encoding.get_ids();
            ids[start..start + tokens.len()].copy_from_slice(tokens);
            mask[start..start + tokens.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, longest), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (rows, longest), &Device::Cpu)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over real tokens only, then unit length: sentence-transformers' Pooling + Normalize.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

impl Embedder for LocalEmbedder {
    fn name(&self) -> &str {
        tvs_guest_core::models::LOCAL_MODEL
    }

    fn embed(&self, texts: &[String], dims: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_counted(texts, dims).map(|(vectors, _)| vectors)
    }

    fn embed_counted(&self, texts: &[String], dims: usize) -> Result<(Vec<Vec<f32>>, Option<usize>), EmbedError> {
        if dims != tvs_guest_core::models::LOCAL_MODEL_DIMS {
            return Err(EmbedError::Dimensions {
                got: tvs_guest_core::models::LOCAL_MODEL_DIMS,
                want: dims,
            });
        }
        let (vectors, tokens) = self.embed_texts_counted(texts)?;
        Ok((vectors, Some(tokens)))
    }
}

/// An OpenAI-compatible `/v1/embeddings` endpoint.
#[derive(Debug)]
pub struct OpenAiEmbedder {
    model: String,
    url: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

/// Attempts per batch; 429 and 5xx answers and connection failures are retried with backoff.
const ATTEMPTS: u32 = 4;

impl OpenAiEmbedder {
    pub fn new(model: &str, base_url: &str, api_key: Option<String>) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        let url = format!(
            "{}/v1/embeddings",
            base_url.trim_end_matches('/').trim_end_matches("/v1")
        );
        OpenAiEmbedder {
            model: model.into(),
            url,
            api_key,
            agent,
        }
    }

    fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({"model": self.model, "input": texts});
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            let mut request = self.agent.post(&self.url);
            if let Some(key) = &self.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            let retryable = match request.send_json(body.clone()) {
                Ok(response) => {
                    let parsed: EmbeddingsResponse = response
                        .into_json()
                        .map_err(|e| EmbedError::Endpoint(format!("unreadable answer: {e}")))?;
                    let mut items = parsed.data;
                    items.sort_by_key(|item| item.index);
                    if items.len() != texts.len() {
                        return Err(EmbedError::Endpoint(format!(
                            "{} vectors for {} texts",
                            items.len(),
                            texts.len()
                        )));
                    }
                    return Ok(items.into_iter().map(|item| item.embedding).collect());
                }
                Err(ureq::Error::Status(code, response)) => {
                    let detail = response.into_string().unwrap_or_default();
                    if code == 429 || code >= 500 {
                        format!("HTTP {code}")
                    } else {
                        return Err(EmbedError::Endpoint(format!(
                            "HTTP {code}: {}",
                            detail.chars().take(200).collect::<String>()
                        )));
                    }
                }
                Err(e) => e.to_string(),
            };
            if attempt == ATTEMPTS {
                return Err(EmbedError::Endpoint(format!("{retryable} after {ATTEMPTS} attempts")));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        unreachable!("the loop returns on its last attempt")
    }
}

impl Embedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: &[String], dims: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(64) {
            for vector in self.call(batch)? {
                if vector.len() != dims {
                    return Err(EmbedError::Dimensions {
                        got: vector.len(),
                        want: dims,
                    });
                }
                vectors.push(vector);
            }
        }
        Ok(vectors)
    }
}
