//! Maximal marginal relevance as LangChain's `maximal_marginal_relevance` computes it: cosine
//! similarities, the most relevant candidate first, then greedily the candidate maximising
//! `lambda * sim(query, d) - (1 - lambda) * max(sim(d, chosen))`.

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let denom = dot(a, a).sqrt() * dot(b, b).sqrt();
    if denom == 0.0 { 0.0 } else { dot(a, b) / denom }
}

/// Indices of the `k` candidates chosen, in the order chosen.
pub fn select(query: &[f32], candidates: &[&[f32]], k: usize, lambda: f32) -> Vec<usize> {
    let relevance: Vec<f32> = candidates.iter().map(|v| cosine(query, v)).collect();
    let mut redundancy = vec![f32::NEG_INFINITY; candidates.len()];
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < k.min(candidates.len()) {
        let best = (0..candidates.len())
            .filter(|i| !chosen.contains(i))
            .map(|i| {
                let penalty = if chosen.is_empty() { 0.0 } else { redundancy[i] };
                (i, lambda * relevance[i] - (1.0 - lambda) * penalty)
            })
            .fold(None, |best: Option<(usize, f32)>, (i, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((i, s)),
            });
        let Some((pick, _)) = best else { break };
        chosen.push(pick);
        for (i, v) in candidates.iter().enumerate() {
            redundancy[i] = redundancy[i].max(cosine(v, candidates[pick]));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_duplicate_loses_to_a_diverse_candidate() {
        let near: &[f32] = &[1.0, 0.0];
        let twin: &[f32] = &[0.999, 0.01];
        let other: &[f32] = &[0.6, 0.8];
        assert_eq!(select(&[1.0, 0.0], &[near, twin, other], 2, 1.0), [0, 1]);
        assert_eq!(select(&[1.0, 0.0], &[near, twin, other], 2, 0.3), [0, 2]);
    }
}
