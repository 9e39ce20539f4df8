//! Deterministic synthetic vectors with the structure of real text embeddings, for tests and
//! benchmarks: a low-dimensional clustered latent mapped to the full dimension by a fixed random
//! matrix, plus noise, then L2-normalised. i.i.d. or clustered Gaussian vectors in 384-d are the
//! worst case for any graph index and say nothing about real corpora; this family gives HNSW
//! recall in the range seen on MiniLM embeddings.

pub use tvs_guest_core::rng::Rng;

/// A generator of embedding-like vectors.
#[derive(Debug, Clone)]
pub struct EmbeddingLike {
    dims: usize,
    latent: usize,
    /// `dims × latent`, row-major.
    projection: Vec<f32>,
    /// Cluster centres in latent space.
    centres: Vec<Vec<f32>>,
    noise: f32,
    rng: Rng,
}

impl EmbeddingLike {
    /// `dims`-dimensional vectors from a 32-d latent with 64 clusters, seeded.
    pub fn new(dims: usize, seed: u64) -> Self {
        Self::with_shape(dims, 32, 64, 0.15, seed)
    }

    pub fn with_shape(dims: usize, latent: usize, clusters: usize, noise: f32, seed: u64) -> Self {
        // The projection and centres depend only on the shape, so two generators with different
        // seeds draw from the same "corpus" (queries vs documents).
        let mut fixed = Rng::new(0x7476_7300 ^ (dims as u64) << 8 ^ latent as u64);
        let scale = 1.0 / (latent as f32).sqrt();
        let projection = (0..dims * latent).map(|_| fixed.normal() * scale).collect();
        let centres = (0..clusters)
            .map(|_| (0..latent).map(|_| fixed.normal()).collect())
            .collect();
        Self {
            dims,
            latent,
            projection,
            centres,
            noise,
            rng: Rng::new(seed),
        }
    }

    /// The next vector (unit length).
    pub fn next_vector(&mut self) -> Vec<f32> {
        let centre = self.rng.below(self.centres.len() as u64) as usize;
        let z: Vec<f32> = (0..self.latent)
            .map(|i| self.centres[centre][i] + 0.6 * self.rng.normal())
            .collect();
        let mut v: Vec<f32> = (0..self.dims)
            .map(|r| {
                let row = &self.projection[r * self.latent..(r + 1) * self.latent];
                row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + self.noise * self.rng.normal()
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// `n` deterministic English sentences of 15–30 words (about 20–40 word pieces, the length of
/// the short passages RAG apps store), for embedding benchmarks and generated corpora.
pub fn sentences(n: usize, seed: u64) -> Vec<String> {
    const SUBJECTS: [&str; 12] = [
        "the support team",
        "our new billing system",
        "a customer in Berlin",
        "the search index",
        "the quarterly report",
        "every tenant",
        "the mobile app",
        "a junior engineer",
        "the storage cluster",
        "the marketing page",
        "this recipe",
        "the hiking trail",
    ];
    const VERBS: [&str; 12] = [
        "explains",
        "slows down",
        "depends on",
        "replaced",
        "is measured against",
        "summarises",
        "was rebuilt after",
        "keeps track of",
        "compares",
        "recommends",
        "ignores",
        "protects",
    ];
    const OBJECTS: [&str; 12] = [
        "password resets for locked accounts",
        "the latency of nearest-neighbour queries",
        "invoices that were paid twice",
        "fresh tomatoes and basil",
        "the backup schedule",
        "interest rates at the central bank",
        "steep paths above the lake",
        "durable writes to disk",
        "the onboarding checklist",
        "refunds for cancelled orders",
        "memory use per open store",
        "the weather forecast for the weekend",
    ];
    const TAILS: [&str; 8] = [
        "because the old design could not keep up",
        "so that nobody has to ask twice",
        "while the rest of the team was on holiday",
        "according to the notes from last week",
        "which surprised almost everyone involved",
        "after a long discussion about trade-offs",
        "and the results were written down carefully",
        "before anyone noticed the difference",
    ];
    let mut rng = Rng::new(seed);
    let mut pick = |options: &[&'static str]| options[rng.below(options.len() as u64) as usize];
    (0..n)
        .map(|i| {
            let mut sentence = format!(
                "{} {} {} {}",
                pick(&SUBJECTS),
                pick(&VERBS),
                pick(&OBJECTS),
                pick(&TAILS)
            );
            if i % 3 == 0 {
                sentence.push_str(&format!(
                    ", and {} {} {}",
                    pick(&SUBJECTS),
                    pick(&VERBS),
                    pick(&OBJECTS)
                ));
            }
            let mut chars = sentence.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or(' ');
            format!("{first}{}.", chars.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_vectors_and_unit_length() {
        let mut a = EmbeddingLike::new(48, 7);
        let mut b = EmbeddingLike::new(48, 7);
        let (va, vb) = (a.next_vector(), b.next_vector());
        assert_eq!(va, vb);
        let norm: f32 = va.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_ne!(a.next_vector(), EmbeddingLike::new(48, 8).next_vector());
    }
}
