//! Maximal marginal relevance, as LangChain's `maximal_marginal_relevance` computes it: cosine
//! similarities, the most relevant candidate first, then greedily the candidate maximising
//! `lambda * sim(query, d) - (1 - lambda) * max(sim(d, chosen))`.

use std::collections::HashMap;

use crate::vectors::{Neighbor, dot};

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let denom = dot(a, a).sqrt() * dot(b, b).sqrt();
    if denom == 0.0 { 0.0 } else { dot(a, b) / denom }
}

/// Picks `k` of `candidates` (nearest first) by MMR; candidates without a vector are skipped.
pub fn select(
    query: &[f32],
    candidates: &[Neighbor],
    vectors: &HashMap<u64, Vec<f32>>,
    k: usize,
    lambda: f32,
) -> Vec<Neighbor> {
    let pool: Vec<(&Neighbor, &[f32])> = candidates
        .iter()
        .filter_map(|n| Some((n, vectors.get(&n.slot)?.as_slice())))
        .collect();
    let relevance: Vec<f32> = pool.iter().map(|(_, v)| cosine(query, v)).collect();
    let mut chosen: Vec<usize> = Vec::with_capacity(k.min(pool.len()));
    // Highest similarity to anything chosen so far, per candidate.
    let mut redundancy = vec![f32::NEG_INFINITY; pool.len()];
    while chosen.len() < k.min(pool.len()) {
        let mut best: Option<(usize, f32)> = None;
        for i in 0..pool.len() {
            if chosen.contains(&i) {
                continue;
            }
            let penalty = if chosen.is_empty() { 0.0 } else { redundancy[i] };
            let score = lambda * relevance[i] - (1.0 - lambda) * penalty;
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        let Some((pick, _)) = best else { break };
        chosen.push(pick);
        for i in 0..pool.len() {
            redundancy[i] = redundancy[i].max(cosine(pool[i].1, pool[pick].1));
        }
    }
    chosen.into_iter().map(|i| *pool[i].0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diversity_skips_a_near_duplicate() {
        let vectors: HashMap<u64, Vec<f32>> = [(0, vec![1.0, 0.0]), (1, vec![0.999, 0.01]), (2, vec![0.6, 0.8])]
            .into_iter()
            .collect();
        let candidates: Vec<Neighbor> = (0..3)
            .map(|slot| Neighbor {
                slot,
                distance: slot as f32,
            })
            .collect();
        let relevant_only = select(&[1.0, 0.0], &candidates, &vectors, 2, 1.0);
        assert_eq!(relevant_only.iter().map(|n| n.slot).collect::<Vec<_>>(), [0, 1]);
        let diverse = select(&[1.0, 0.0], &candidates, &vectors, 2, 0.3);
        assert_eq!(diverse.iter().map(|n| n.slot).collect::<Vec<_>>(), [0, 2]);
    }
}
