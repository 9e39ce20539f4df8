//! Embedding models behind the guests' `embedder` import. A tenant's model is fixed in its
//! `user_config.json`: `none` (clients send vectors), or `openai:<model>` for any
//! OpenAI-compatible `/v1/embeddings` endpoint (`TVS_OPENAI_BASE_URL`, key from
//! `OPENAI_API_KEY`). The local all-MiniLM-L6-v2 model arrives with the embeddings work.
//!
//! Invariant: every vector handed back has the dimensions the caller asked for; a model that
//! returns anything else is an error, never a silently mixed collection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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
    Err(EmbedError::Unavailable(
        model.into(),
        "the local model arrives with the embeddings work".into(),
    ))
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
