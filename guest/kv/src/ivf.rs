//! The arithmetic of a clustered (IVF) index, apart from where its bytes live: distances, k-means
//! for the centroids, ranking centroids for a query, and choosing how many clusters a search
//! reads (`nprobe`) from the recall measured on held-out vectors. Deterministic for a seed, so
//! a retried write computes the same index.

use tvs_guest_core::rng::Rng;

use crate::Metric;

/// `a · b` with eight independent accumulators, which compilers turn into SIMD (wasm `simd128`
/// included) without `unsafe`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `|a - b|²`, as [`dot`].
pub fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Lower is closer; the same numbers as [`crate::distance`], with `b`'s norm given (stored
/// beside each vector so a scan does not compute it again). `query_norm` is the query's.
pub fn distance_with_norms(metric: Metric, query: &[f32], query_norm: f32, b: &[f32], b_norm: f32) -> f32 {
    match metric {
        Metric::L2 => squared_l2(query, b),
        Metric::Ip => 1.0 - dot(query, b),
        Metric::Cos => {
            let norms = query_norm * b_norm;
            if norms == 0.0 { 1.0 } else { 1.0 - dot(query, b) / norms }
        }
    }
}

/// The cluster a vector belongs to: its nearest centroid by the tenant's metric. For `cos` and
/// `ip` the centroids are compared by angle (spherical k-means), so one vector's length does not
/// decide its cluster.
fn centroid_distance(metric: Metric, v: &[f32], centroid: &[f32]) -> f32 {
    match metric {
        Metric::L2 => squared_l2(v, centroid),
        Metric::Cos | Metric::Ip => -dot(v, centroid),
    }
}

/// Centroids of a clustered index, `dims` floats each.
#[derive(Debug, Clone, PartialEq)]
pub struct Centroids {
    pub dims: usize,
    pub data: Vec<f32>,
}

impl Centroids {
    pub fn len(&self) -> usize {
        self.data.len() / self.dims.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dims..(i + 1) * self.dims]
    }

    /// The nearest centroid of `v`.
    pub fn nearest(&self, metric: Metric, v: &[f32]) -> usize {
        let mut best = (f32::INFINITY, 0);
        for i in 0..self.len() {
            let d = centroid_distance(metric, v, self.get(i));
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    /// Every centroid, nearest to `query` first (ties by index).
    pub fn ranked(&self, metric: Metric, query: &[f32]) -> Vec<u32> {
        let mut order: Vec<(f32, u32)> = (0..self.len())
            .map(|i| (centroid_distance(metric, query, self.get(i)), i as u32))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, i)| i).collect()
    }

    /// Appends a centroid; returns its index.
    pub fn push(&mut self, centroid: &[f32]) -> usize {
        self.data.extend_from_slice(centroid);
        self.len() - 1
    }

    pub fn set(&mut self, i: usize, centroid: &[f32]) {
        self.data[i * self.dims..(i + 1) * self.dims].copy_from_slice(centroid);
    }
}

/// A centroid as the mean of `members`, normalised for `cos`/`ip` (spherical k-means).
fn mean(metric: Metric, dims: usize, members: impl Iterator<Item = impl AsRef<[f32]>>) -> Option<Vec<f32>> {
    let mut sum = vec![0.0f32; dims];
    let mut n = 0usize;
    for v in members {
        for (s, x) in sum.iter_mut().zip(v.as_ref()) {
            *s += x;
        }
        n += 1;
    }
    if n == 0 {
        return None;
    }
    match metric {
        Metric::L2 => sum.iter_mut().for_each(|s| *s /= n as f32),
        Metric::Cos | Metric::Ip => {
            let length = norm(&sum);
            if length > 0.0 {
                sum.iter_mut().for_each(|s| *s /= length);
            }
        }
    }
    Some(sum)
}

/// `k` centroids of `vectors` by Lloyd's k-means from a k-means++-style start (each next seed
/// the farthest of a few random candidates), `iterations` rounds. An empty cluster takes the
/// vector farthest from its centroid, so every centroid has members.
pub fn kmeans(metric: Metric, dims: usize, vectors: &[&[f32]], k: usize, iterations: usize, seed: u64) -> Centroids {
    let k = k.clamp(1, vectors.len().max(1));
    let mut rng = Rng::new(seed);
    let mut centroids = Centroids {
        dims,
        data: Vec::with_capacity(k * dims),
    };
    if vectors.is_empty() {
        return centroids;
    }
    let normalised = |v: &[f32]| -> Vec<f32> { mean(metric, dims, std::iter::once(v)).unwrap_or_else(|| v.to_vec()) };
    centroids.push(&normalised(vectors[rng.below(vectors.len() as u64) as usize]));
    // Distance of each vector to its nearest seed so far, kept up to date as seeds are added.
    let mut nearest: Vec<f32> = vectors
        .iter()
        .map(|v| centroid_distance(metric, v, centroids.get(0)))
        .collect();
    while centroids.len() < k {
        let mut best = (f32::NEG_INFINITY, 0);
        for _ in 0..8 {
            let candidate = rng.below(vectors.len() as u64) as usize;
            if nearest[candidate] > best.0 {
                best = (nearest[candidate], candidate);
            }
        }
        let seed_index = centroids.push(&normalised(vectors[best.1]));
        for (d, v) in nearest.iter_mut().zip(vectors) {
            *d = d.min(centroid_distance(metric, v, centroids.get(seed_index)));
        }
    }
    let mut assignment = vec![0usize; vectors.len()];
    for _ in 0..iterations {
        let mut changed = false;
        for (a, v) in assignment.iter_mut().zip(vectors) {
            let c = centroids.nearest(metric, v);
            changed |= *a != c;
            *a = c;
        }
        let mut sums = vec![0.0f32; k * dims];
        let mut counts = vec![0usize; k];
        for (&a, v) in assignment.iter().zip(vectors) {
            counts[a] += 1;
            for (s, x) in sums[a * dims..(a + 1) * dims].iter_mut().zip(v.iter()) {
                *s += x;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                // The vector worst served by its centroid starts this cluster again.
                let far = (0..vectors.len())
                    .max_by(|&i, &j| {
                        let di = centroid_distance(metric, vectors[i], centroids.get(assignment[i]));
                        let dj = centroid_distance(metric, vectors[j], centroids.get(assignment[j]));
                        di.total_cmp(&dj)
                    })
                    .unwrap_or(0);
                centroids.set(c, &normalised(vectors[far]));
                assignment[far] = c;
                changed = true;
                continue;
            }
            let slice = &sums[c * dims..(c + 1) * dims];
            if let Some(m) = mean(metric, dims, std::iter::once(slice)) {
                let m = match metric {
                    Metric::L2 => m.iter().map(|x| x / counts[c] as f32).collect(),
                    Metric::Cos | Metric::Ip => m,
                };
                centroids.set(c, &m);
            }
        }
        if !changed {
            break;
        }
    }
    centroids
}

/// The recall@k a search reading the `nprobe` nearest clusters reaches, for each `nprobe` from 1:
/// `truths[q]` holds the clusters of query q's true nearest neighbours and `rankings[q]` its
/// clusters nearest first. A neighbour is found when its cluster is read (the scan inside a
/// cluster is exact).
pub fn recall_by_nprobe(rankings: &[Vec<u32>], truths: &[Vec<u32>], clusters: usize) -> Vec<f32> {
    let mut found = vec![0usize; clusters + 1];
    let mut total = 0usize;
    for (ranking, truth) in rankings.iter().zip(truths) {
        let mut position = vec![usize::MAX; clusters];
        for (p, &c) in ranking.iter().enumerate() {
            if let Some(slot) = position.get_mut(c as usize) {
                *slot = p;
            }
        }
        for &c in truth {
            total += 1;
            if let Some(&p) = position.get(c as usize)
                && p < clusters
            {
                found[p + 1] += 1;
            }
        }
    }
    let mut recall = Vec::with_capacity(clusters);
    let mut cumulative = 0usize;
    for f in &found[1..] {
        cumulative += f;
        recall.push(if total == 0 {
            1.0
        } else {
            cumulative as f32 / total as f32
        });
    }
    recall
}

/// The fewest clusters whose recall reaches `target` (all of them when none does), and that recall.
pub fn choose_nprobe(recall: &[f32], target: f32) -> (usize, f32) {
    recall
        .iter()
        .position(|&r| r >= target)
        .map_or((recall.len().max(1), recall.last().copied().unwrap_or(1.0)), |i| {
            (i + 1, recall[i])
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kernels_agree_with_the_plain_sums() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..19).map(|i| (i * i) as f32 * 0.01).collect();
        let plain_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let plain_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - plain_dot).abs() < 1e-4);
        assert!((squared_l2(&a, &b) - plain_l2).abs() < 1e-3);
    }

    #[test]
    fn kmeans_finds_well_separated_groups() {
        let mut vectors = Vec::new();
        for group in 0..4 {
            for i in 0..50 {
                let mut v = vec![0.0f32; 4];
                v[group] = 10.0;
                v[(group + 1) % 4] = (i % 7) as f32 * 0.1;
                vectors.push(v);
            }
        }
        let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let centroids = kmeans(Metric::L2, 4, &refs, 4, 20, 7);
        let mut clusters: Vec<usize> = (0..4)
            .map(|g| centroids.nearest(Metric::L2, &vectors[g * 50]))
            .collect();
        // Every member lands with its group, and the four groups in four clusters.
        for (g, v) in vectors.iter().enumerate() {
            assert_eq!(centroids.nearest(Metric::L2, v), clusters[g / 50]);
        }
        clusters.sort_unstable();
        clusters.dedup();
        assert_eq!(clusters.len(), 4);
    }

    #[test]
    fn recall_grows_with_the_clusters_read_and_the_smallest_breadth_is_chosen() {
        // Query 0's neighbours are in its 1st and 3rd clusters, query 1's in its 1st.
        let rankings = vec![vec![2, 0, 1], vec![1, 2, 0]];
        let truths = vec![vec![2, 1], vec![1, 1]];
        let recall = recall_by_nprobe(&rankings, &truths, 3);
        assert_eq!(recall, vec![0.75, 0.75, 1.0]);
        assert_eq!(choose_nprobe(&recall, 0.7), (1, 0.75));
        assert_eq!(choose_nprobe(&recall, 0.95), (3, 1.0));
    }
}
