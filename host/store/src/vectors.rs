//! Vector storage and k-NN search for one store: an exact scan over a slab of f32 rows for
//! small stores, an HNSW graph (usearch) past a threshold.
//!
//! Documents are addressed by *slot*: a dense number the store assigns and reuses after deletes,
//! so the slab stays compact. In the graph each version of a vector is a new node (see
//! [`Graph`] for why nodes are never removed from usearch).
//!
//! Invariants:
//! - In exact mode `slab` holds every live vector; `graph` is `None`.
//! - In HNSW mode `slab` is dropped (memory stays near 1× the raw vectors); every live vector
//!   is either published in `graph` or waits in `pending` (searched exactly) until the store's
//!   indexer thread adds it, so writers never wait for graph insertions. A slot is never in both.
//! - While a background (re)build runs, the current structure stays authoritative and `dirty`
//!   collects the slots changed since the build's copy was taken; [`Vectors::install_graph`]
//!   moves them to `pending` when the new graph replaces the old one.
//! - Graph capacity grows only under the store's write lock, so it never races a search.
//! - usearch refuses work when all its per-thread contexts are taken, so every call into the
//!   graph holds a permit of [`Permits`], sized to the contexts reserved.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use usearch::{Index, IndexOptions, MetricKind};

use crate::config::{DEFAULT_EF_SEARCH, EF_SEARCH_CALIBRATED, Metric, RECALL_TARGET, ScalarKind, StoreConfig};

/// A (distance, slot) pair; lower distance is closer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub slot: u64,
    pub distance: f32,
}

/// The distance tvs reports, matching usearch's definitions.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => wide::l2sq(a, b),
        Metric::Ip => 1.0 - wide::dot(a, b),
        Metric::Cos => {
            let (ab, aa, bb) = portable::dot3(a, b);
            if aa == 0.0 || bb == 0.0 {
                return 1.0;
            }
            1.0 - ab / (aa.sqrt() * bb.sqrt())
        }
    }
}

/// The inner product, with the CPU's SIMD.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    wide::dot(a, b)
}

fn inverse_norm(v: &[f32]) -> f32 {
    let norm = dot(v, v).sqrt();
    if norm == 0.0 { 0.0 } else { 1.0 / norm }
}

/// Kernels with four independent accumulators, written once over pulp's SIMD types and
/// dispatched at run time to the CPU's (AVX2+FMA on x86_64, NEON on aarch64): a single
/// accumulator waits on one chain of adds, four keep the FMA units busy.
pub mod wide {
    use pulp::{Arch, Simd, WithSimd};
    use std::sync::OnceLock;

    fn arch() -> Arch {
        static ARCH: OnceLock<Arch> = OnceLock::new();
        *ARCH.get_or_init(Arch::new)
    }

    /// Σ (a−b)² when `DIFFERENCE`, else Σ a·b: one loop, the choice made at compile time.
    struct Sum<'a, const DIFFERENCE: bool>(&'a [f32], &'a [f32]);

    impl<const DIFFERENCE: bool> WithSimd for Sum<'_, DIFFERENCE> {
        type Output = f32;

        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> f32 {
            let term = |x: S::f32s, y: S::f32s| {
                if DIFFERENCE {
                    let d = simd.sub_f32s(x, y);
                    (d, d)
                } else {
                    (x, y)
                }
            };
            let (a, a_tail) = S::as_simd_f32s(self.0);
            let (b, b_tail) = S::as_simd_f32s(self.1);
            let mut acc = [simd.splat_f32s(0.0); 4];
            let (a4, a_rest) = a.as_chunks::<4>();
            let (b4, b_rest) = b.as_chunks::<4>();
            for (x, y) in a4.iter().zip(b4) {
                for i in 0..4 {
                    let (p, q) = term(x[i], y[i]);
                    acc[i] = simd.mul_add_e_f32s(p, q, acc[i]);
                }
            }
            for (x, y) in a_rest.iter().zip(b_rest) {
                let (p, q) = term(*x, *y);
                acc[0] = simd.mul_add_e_f32s(p, q, acc[0]);
            }
            let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
            let tail: f32 = a_tail
                .iter()
                .zip(b_tail)
                .map(|(x, y)| if DIFFERENCE { (x - y) * (x - y) } else { x * y })
                .sum();
            simd.reduce_sum_f32s(sum) + tail
        }
    }

    /// Squared L2 distance (slices of equal length).
    pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        arch().dispatch(Sum::<true>(a, b))
    }

    /// Inner product (slices of equal length).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        arch().dispatch(Sum::<false>(a, b))
    }
}

/// The kernels in plain Rust (eight lanes the compiler vectorises for the build's baseline
/// CPU): the reference the dispatched ones are tested and benchmarked against.
pub mod portable {
    use crate::config::Metric;

    pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
        match metric {
            Metric::L2 => {
                let mut acc = [0f32; 8];
                let (ca, ra) = a.as_chunks::<8>();
                let (cb, rb) = b.as_chunks::<8>();
                for (x, y) in ca.iter().zip(cb) {
                    for i in 0..8 {
                        let d = x[i] - y[i];
                        acc[i] += d * d;
                    }
                }
                let tail: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
                acc.iter().sum::<f32>() + tail
            }
            Metric::Ip => 1.0 - dot(a, b),
            Metric::Cos => {
                let (ab, aa, bb) = dot3(a, b);
                if aa == 0.0 || bb == 0.0 {
                    return 1.0;
                }
                1.0 - ab / (aa.sqrt() * bb.sqrt())
            }
        }
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, ra) = a.as_chunks::<8>();
        let (cb, rb) = b.as_chunks::<8>();
        for (x, y) in ca.iter().zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
    }

    /// a·b, a·a and b·b in one pass.
    pub fn dot3(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
        let (mut ab, mut aa, mut bb) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let (ca, ra) = a.as_chunks::<8>();
        let (cb, rb) = b.as_chunks::<8>();
        for (x, y) in ca.iter().zip(cb) {
            for i in 0..8 {
                ab[i] += x[i] * y[i];
                aa[i] += x[i] * x[i];
                bb[i] += y[i] * y[i];
            }
        }
        let mut sums = (ab.iter().sum::<f32>(), aa.iter().sum::<f32>(), bb.iter().sum::<f32>());
        for (x, y) in ra.iter().zip(rb) {
            sums.0 += x * y;
            sums.1 += x * x;
            sums.2 += y * y;
        }
        sums
    }
}

/// Keeps the `k` nearest candidates seen.
struct TopK {
    k: usize,
    heap: BinaryHeap<HeapItem>,
}

#[derive(PartialEq)]
struct HeapItem(f32, u64);
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }
    /// Whether `offer(_, distance)` would keep the candidate; lets a scan skip evaluating an
    /// expensive filter on candidates that are too far anyway.
    fn would_take(&self, distance: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|worst| distance < worst.0)
    }
    fn offer(&mut self, slot: u64, distance: f32) {
        if self.heap.len() < self.k {
            self.heap.push(HeapItem(distance, slot));
        } else if let Some(worst) = self.heap.peek()
            && distance < worst.0
        {
            self.heap.pop();
            self.heap.push(HeapItem(distance, slot));
        }
    }
    fn into_sorted(self) -> Vec<Neighbor> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|HeapItem(distance, slot)| Neighbor { slot, distance })
            .collect()
    }
}

/// A counting semaphore bounding concurrent calls into usearch.
#[derive(Debug)]
pub struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        PermitGuard(self)
    }
}

struct PermitGuard<'a>(&'a Permits);
impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// usearch thread contexts reserved per graph (and permits handed out).
pub fn graph_threads() -> usize {
    // Asked once: on Linux the answer reads cgroup files, 7% of a small tenant's cold open.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) * 4)
}

/// Creates an empty graph for `config`.
pub fn new_graph(config: &StoreConfig) -> Result<Index, String> {
    let options = IndexOptions {
        dimensions: config.dims,
        metric: match config.metric {
            Metric::Cos => MetricKind::Cos,
            Metric::Ip => MetricKind::IP,
            Metric::L2 => MetricKind::L2sq,
        },
        quantization: match config.scalar {
            ScalarKind::F32 => usearch::ScalarKind::F32,
            ScalarKind::F16 => usearch::ScalarKind::F16,
            ScalarKind::I8 => usearch::ScalarKind::I8,
        },
        connectivity: 16,
        expansion_add: 128,
        // The breadth of a search is its `count` instead (usearch explores max(expansion,
        // count)), so each search can carry its graph's calibrated breadth.
        expansion_search: 1,
        multi: false,
    };
    let index = Index::new(&options).map_err(|e| e.to_string())?;
    index
        .reserve_capacity_and_threads(1024, graph_threads())
        .map_err(|e| e.to_string())?;
    Ok(index)
}

/// The breadth of a graph: the config's when it sets one, else the calibrated one, else the
/// fallback.
fn breadth(config: &StoreConfig, calibration: Option<&Calibration>) -> usize {
    match (config.ef_search, calibration) {
        (EF_SEARCH_CALIBRATED, Some(c)) => c.ef_search,
        (EF_SEARCH_CALIBRATED, None) => DEFAULT_EF_SEARCH,
        (explicit, _) => explicit,
    }
}

/// Grows `index` so one more vector fits; doubling keeps the amortised cost low.
pub fn ensure_capacity(index: &Index, extra: usize) -> Result<(), String> {
    let needed = index.size() + extra;
    if needed > index.capacity() {
        let cap = needed.max(index.capacity() * 2).max(1024);
        index
            .reserve_capacity_and_threads(cap, graph_threads())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Marks a slot without a node, or a dead or unpublished node.
pub const NONE: u64 = u64::MAX;

/// An HNSW graph whose nodes are never removed from usearch, filled by one thread at a time.
///
/// usearch reuses the node of a removed key for the next insertion, and that update path can
/// leave the new node unreachable from the graph (seen with usearch 2.26.6: after a few hundred
/// remove+add cycles on 1,200 vectors, several exact self-queries missed their own vector while
/// `exact_search` found it). So a changed or deleted document only *kills* its node here: the node
/// stays in the graph as a routing point, searches skip it through the filter, and the store
/// rebuilds the graph in the background once dead nodes pile up. Concurrent `add`s showed the
/// same symptom, so only one thread ever adds to a graph.
pub struct Graph {
    index: Arc<Index>,
    node_of_slot: Vec<u64>,
    slot_of_node: Vec<u64>,
    dead: usize,
    /// Search breadth; calibrated when the store asked for it ([`Calibration`]).
    ef: usize,
    calibration: Option<Calibration>,
    /// Whether the config asks for calibration (and re-calibration as the graph grows).
    auto: bool,
}

/// How a graph's search breadth was chosen: the recall@10 measured at it on vectors held out of
/// the graph, and the graph's size then.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub ef_search: usize,
    pub recall: f32,
    pub nodes: usize,
}

/// Breadths a calibration tries, narrowest first.
const EF_LADDER: [usize; 18] = [
    16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1024,
];
/// Vectors held out of a graph build to calibrate it.
const CALIBRATION_QUERIES: usize = 300;
/// Fewer rows than this: the graph is not calibrated (its searches are cheap anyway).
const CALIBRATION_MIN_ROWS: usize = 2_000;
/// Neighbours the recall is measured on.
const CALIBRATION_K: usize = 10;
/// Dead nodes beyond which a growing graph is not re-calibrated (truth would need that many
/// more exact results; the rebuild that dead nodes bring calibrates anyway).
const CALIBRATION_MAX_DEAD: usize = 1_000;
/// Measured recall must beat the target by this much: 300 queries × 10 neighbours measure it to
/// about ±0.004 (one standard error), and the graph grows up to 1.5× before the next
/// calibration. At 200k vectors a margin of 0.005 let fresh queries come out at 0.944 where the
/// held-out ones said 0.957, and 0.01 with calibration at each doubling gave 0.946 in the suite.
const CALIBRATION_MARGIN: f32 = 0.015;

/// The narrowest breadth on [`EF_LADDER`] at which `index` finds `target` of the true top 10 of
/// `queries` (vectors not in it), with the recall measured there (the widest if none does).
pub fn calibrate(index: &Index, queries: &[Vec<f32>], target: f32) -> Option<Calibration> {
    calibrate_live(index, queries, target, |_| true, 0)
}

/// [`calibrate`] over the nodes for which `is_live` holds, `dead` being how many do not.
fn calibrate_live(
    index: &Index,
    queries: &[Vec<f32>],
    target: f32,
    is_live: impl Fn(u64) -> bool,
    dead: usize,
) -> Option<Calibration> {
    let k = CALIBRATION_K.min(index.size().saturating_sub(dead));
    if queries.is_empty() || k == 0 {
        return None;
    }
    let truths: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| {
            index
                .exact_search(q, k + dead)
                .map(|m| m.keys.into_iter().filter(|node| is_live(*node)).take(k).collect())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let mut last = None;
    for ef in EF_LADDER {
        let mut found = 0usize;
        for (query, truth) in queries.iter().zip(&truths) {
            let hits = index.filtered_search(query, ef.max(k), &is_live).ok()?;
            found += hits.keys.iter().take(k).filter(|key| truth.contains(key)).count();
        }
        let recall = found as f32 / (queries.len() * k) as f32;
        let calibration = Calibration {
            ef_search: ef,
            recall,
            nodes: index.size(),
        };
        if recall >= target + CALIBRATION_MARGIN {
            return Some(calibration);
        }
        last = Some(calibration);
    }
    last
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.index.size())
            .field("dead", &self.dead)
            .finish()
    }
}

impl Graph {
    /// A graph over `rows`, node key = slot.
    /// When the config asks for calibration and there are enough rows, a sample is held out,
    /// the graph's breadth calibrated on it ([`calibrate`]), then the sample added.
    pub fn build(config: &StoreConfig, rows: &[(u64, Vec<f32>)]) -> Result<Graph, String> {
        let index = new_graph(config)?;
        ensure_capacity(&index, rows.len() + rows.len() / 4)?;
        let calibrating = config.ef_search == EF_SEARCH_CALIBRATED && rows.len() >= CALIBRATION_MIN_ROWS;
        let stride = if calibrating {
            rows.len() / CALIBRATION_QUERIES
        } else {
            usize::MAX
        };
        let held_out = |i: usize| i % stride == stride - 1;
        for (i, (slot, vector)) in rows.iter().enumerate() {
            if !held_out(i) {
                index.add(*slot, vector).map_err(|e| e.to_string())?;
            }
        }
        let calibration = if calibrating {
            let queries: Vec<Vec<f32>> = rows
                .iter()
                .enumerate()
                .filter(|(i, _)| held_out(*i))
                .map(|(_, (_, v))| v.clone())
                .collect();
            let calibration = calibrate(&index, &queries, RECALL_TARGET);
            for (i, (slot, vector)) in rows.iter().enumerate() {
                if held_out(i) {
                    index.add(*slot, vector).map_err(|e| e.to_string())?;
                }
            }
            calibration
        } else {
            None
        };
        let top = rows.iter().map(|(slot, _)| *slot + 1).max().unwrap_or(0) as usize;
        let mut node_of_slot = vec![NONE; top];
        for (slot, _) in rows {
            node_of_slot[*slot as usize] = *slot;
        }
        let slot_of_node = node_of_slot.clone();
        Ok(Graph {
            index: Arc::new(index),
            node_of_slot,
            slot_of_node,
            dead: 0,
            ef: breadth(config, calibration.as_ref()),
            calibration,
            auto: config.ef_search == EF_SEARCH_CALIBRATED,
        })
    }

    /// Whether the graph has grown enough since its calibration (or to the size one starts at)
    /// to calibrate again; not with many dead nodes (a rebuild comes first).
    fn wants_calibration(&self) -> bool {
        let since = self.calibration.map_or(CALIBRATION_MIN_ROWS * 2 / 3, |c| c.nodes);
        self.auto && self.dead <= CALIBRATION_MAX_DEAD && 2 * self.index.size() >= 3 * since
    }

    /// The calibration this graph's breadth came from, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The breadth searches use.
    pub fn ef_search(&self) -> usize {
        self.ef
    }

    /// Sets the breadth from a snapshot's calibration (or the config's).
    pub fn set_calibration(&mut self, config: &StoreConfig, calibration: Option<Calibration>) {
        self.ef = breadth(config, calibration.as_ref());
        self.calibration = calibration;
        self.auto = config.ef_search == EF_SEARCH_CALIBRATED;
    }

    /// A graph loaded from a snapshot; `nodes` lists (slot, node) of the documents in it.
    pub fn restore(index: Index, nodes: impl Iterator<Item = (u64, u64)>, next_node: u64) -> Result<Graph, String> {
        let mut graph = Graph {
            index: Arc::new(index),
            node_of_slot: Vec::new(),
            slot_of_node: vec![NONE; next_node as usize],
            dead: 0,
            ef: DEFAULT_EF_SEARCH,
            calibration: None,
            auto: false,
        };
        let mut live = 0;
        for (slot, node) in nodes {
            if node >= next_node || graph.slot_of_node[node as usize] != NONE {
                return Err(format!("snapshot maps node {node} twice or beyond {next_node}"));
            }
            graph.slot_of_node[node as usize] = slot;
            if graph.node_of_slot.len() <= slot as usize {
                graph.node_of_slot.resize(slot as usize + 1, NONE);
            }
            graph.node_of_slot[slot as usize] = node;
            live += 1;
        }
        graph.dead = graph.index.size().saturating_sub(live);
        Ok(graph)
    }

    fn node(&self, slot: u64) -> Option<u64> {
        self.node_of_slot.get(slot as usize).copied().filter(|n| *n != NONE)
    }

    /// Node key of a slot's published vector, [`NONE`] when it has none.
    pub fn node_of(&self, slot: u64) -> u64 {
        self.node(slot).unwrap_or(NONE)
    }

    /// Key the next node gets.
    pub fn next_node(&self) -> u64 {
        self.slot_of_node.len() as u64
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    fn kill(&mut self, slot: u64) {
        if let Some(node) = self.node(slot) {
            self.slot_of_node[node as usize] = NONE;
            self.node_of_slot[slot as usize] = NONE;
            self.dead += 1;
        }
    }

    fn publish(&mut self, slot: u64, node: u64) {
        self.kill(slot);
        self.slot_of_node[node as usize] = slot;
        if self.node_of_slot.len() <= slot as usize {
            self.node_of_slot.resize(slot as usize + 1, NONE);
        }
        self.node_of_slot[slot as usize] = node;
    }

    fn get(&self, slot: u64, out: &mut [f32]) -> bool {
        self.node(slot)
            .is_some_and(|node| matches!(self.index.get(node, out), Ok(1)))
    }

    fn search(&self, query: &[f32], k: usize, accept: impl Fn(u64) -> bool) -> Result<Vec<Neighbor>, String> {
        let slot_of = |node: u64| self.slot_of_node.get(node as usize).copied().filter(|s| *s != NONE);
        // Asking for `ef` results makes usearch search that wide; the nearest `k` are kept.
        let found = self
            .index
            .filtered_search(query, k.max(self.ef), |node| slot_of(node).is_some_and(&accept))
            .map_err(|e| e.to_string())?;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .take(k)
            .filter_map(|(node, distance)| {
                Some(Neighbor {
                    slot: slot_of(node)?,
                    distance,
                })
            })
            .collect())
    }

    /// Resident bytes of the graph's nodes: vectors at the stored scalar width plus the base
    /// layer's links. usearch's own `memory_usage` counts reserved arenas that are mostly never
    /// touched (it reported 3.45x the raw vectors where the process RSS grew by 1.13x).
    pub fn estimated_bytes(&self) -> usize {
        let scalar_bytes = match self.index.scalar_kind() {
            usearch::ScalarKind::F64 => 8,
            usearch::ScalarKind::F32 => 4,
            usearch::ScalarKind::F16 | usearch::ScalarKind::BF16 => 2,
            _ => 1,
        };
        let per_node = self.index.dimensions() * scalar_bytes + 2 * self.index.connectivity() * 4 + 16;
        self.index.size() * per_node
    }

    /// Whether dead nodes are numerous enough to rebuild: at least 1,000 and half the live ones.
    pub fn wants_rebuild(&self) -> bool {
        let live = self.index.size().saturating_sub(self.dead);
        self.dead >= 1000 && self.dead * 2 >= live
    }
}

/// Vectors written since the graph was built, waiting for the indexer; searched exactly.
#[derive(Debug, Default)]
struct Pending {
    dims: usize,
    rows: Vec<f32>,
    slots: Vec<u64>,
    versions: Vec<u64>,
    position: HashMap<u64, usize>,
    next_version: u64,
}

impl Pending {
    fn new(dims: usize) -> Self {
        Pending {
            dims,
            ..Default::default()
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn put(&mut self, slot: u64, vector: &[f32]) {
        self.next_version += 1;
        match self.position.get(&slot) {
            Some(&i) => {
                self.rows[i * self.dims..(i + 1) * self.dims].copy_from_slice(vector);
                self.versions[i] = self.next_version;
            }
            None => {
                self.position.insert(slot, self.slots.len());
                self.slots.push(slot);
                self.versions.push(self.next_version);
                self.rows.extend_from_slice(vector);
            }
        }
    }

    fn remove(&mut self, slot: u64) {
        let Some(i) = self.position.remove(&slot) else { return };
        let last = self.slots.len() - 1;
        if i != last {
            let moved = self.slots[last];
            self.slots[i] = moved;
            self.versions[i] = self.versions[last];
            self.rows
                .copy_within(last * self.dims..(last + 1) * self.dims, i * self.dims);
            self.position.insert(moved, i);
        }
        self.slots.pop();
        self.versions.pop();
        self.rows.truncate(last * self.dims);
        // A bulk load can park hundreds of MB here; give it back once the indexer drains it.
        if self.rows.capacity() > 4 * self.rows.len() + (1 << 16) {
            self.rows.shrink_to(2 * self.rows.len());
            self.slots.shrink_to(2 * self.slots.len());
            self.versions.shrink_to(2 * self.versions.len());
            self.position.shrink_to(2 * self.position.len());
        }
    }

    fn row(&self, slot: u64) -> Option<&[f32]> {
        self.position
            .get(&slot)
            .map(|&i| &self.rows[i * self.dims..(i + 1) * self.dims])
    }

    fn version(&self, slot: u64) -> Option<u64> {
        self.position.get(&slot).map(|&i| self.versions[i])
    }
}

/// A batch handed to the indexer: rows to add to `index` under the node keys reserved for them.
pub struct IndexBatch {
    index: Arc<Index>,
    permits: Arc<Permits>,
    epoch: u64,
    first_node: u64,
    rows: Vec<(u64, u64, Vec<f32>)>,
    /// When the graph is due for re-calibration: which nodes are live (a copy of the graph's
    /// node → slot map, `NONE` for dead ones) and how many are dead.
    recalibrate: Option<(Vec<u64>, usize)>,
}

impl std::fmt::Debug for IndexBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexBatch")
            .field("first_node", &self.first_node)
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl IndexBatch {
    /// Adds the batch's rows to the graph. Runs without the store's lock: searches skip the new
    /// nodes until [`Vectors::finish_indexing`] publishes them.
    pub fn add_all(&self) -> Result<(), String> {
        let _permit = self.permits.acquire();
        for (i, (_, _, row)) in self.rows.iter().enumerate() {
            self.index
                .add(self.first_node + i as u64, row)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Re-calibrates the graph's breadth when it is due, with this batch's vectors (not in the
    /// graph yet) as the queries. Call before [`IndexBatch::add_all`]; runs without any lock.
    pub fn calibrate(&self) -> Option<Calibration> {
        let (live, dead) = self.recalibrate.as_ref()?;
        let queries: Vec<Vec<f32>> = self
            .rows
            .iter()
            .take(CALIBRATION_QUERIES)
            .map(|(_, _, v)| v.clone())
            .collect();
        let _permit = self.permits.acquire();
        let is_live = |node: u64| live.get(node as usize).is_some_and(|s| *s != NONE);
        calibrate_live(&self.index, &queries, RECALL_TARGET, is_live, *dead)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The vectors of one store.
pub struct Vectors {
    dims: usize,
    metric: Metric,
    slab: Option<Vec<f32>>,
    /// Per-slot `1/|v|` for cosine stores in exact mode, so a scan costs one dot product a row.
    inverse_norms: Vec<f32>,
    graph: Option<Graph>,
    pending: Pending,
    /// Bumped whenever `graph` is replaced, so an indexer batch for an old graph is discarded.
    graph_epoch: u64,
    /// Bumped whenever the graph changes without a log record (a graph installed, pending rows
    /// published), so a snapshot of the same log position can still be out of date.
    index_changes: u64,
    /// Whether an indexer thread is draining `pending`.
    indexing: bool,
    permits: Arc<Permits>,
    dirty: Option<HashSet<u64>>,
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vectors")
            .field("dims", &self.dims)
            .field("metric", &self.metric)
            .field("slab_rows", &self.slab.as_ref().map(|s| s.len() / self.dims.max(1)))
            .field("graph", &self.graph)
            .field("pending", &self.pending.len())
            .field("building", &self.dirty.is_some())
            .finish()
    }
}

impl std::fmt::Debug for HeapItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.0, self.1)
    }
}

impl Vectors {
    /// An exact-mode store.
    pub fn exact(dims: usize, metric: Metric) -> Self {
        Self {
            dims,
            metric,
            slab: Some(Vec::new()),
            inverse_norms: Vec::new(),
            graph: None,
            pending: Pending::new(dims),
            graph_epoch: 0,
            index_changes: 0,
            indexing: false,
            permits: Arc::new(Permits::new(graph_threads())),
            dirty: None,
        }
    }

    /// An HNSW-mode store over an existing graph.
    pub fn with_graph(dims: usize, metric: Metric, graph: Graph) -> Self {
        Self {
            slab: None,
            graph: Some(graph),
            ..Self::exact(dims, metric)
        }
    }

    pub fn is_hnsw(&self) -> bool {
        self.graph.is_some()
    }

    pub fn is_building(&self) -> bool {
        self.dirty.is_some()
    }

    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// Vectors not yet in the graph.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Changes to the graph made without a log record (see the field); 0 for a fresh load.
    pub fn index_changes(&self) -> u64 {
        self.index_changes
    }

    /// The raw slab (exact mode), row `slot` at `[slot*dims .. (slot+1)*dims]`.
    pub fn slab(&self) -> Option<&[f32]> {
        self.slab.as_deref()
    }

    /// Replaces the slab wholesale (snapshot load).
    pub fn set_slab(&mut self, slab: Vec<f32>) {
        if self.metric == Metric::Cos {
            self.inverse_norms = slab.chunks_exact(self.dims.max(1)).map(inverse_norm).collect();
        }
        self.slab = Some(slab);
    }

    /// Stores `vector` under `slot`, replacing any earlier vector there. In HNSW mode the vector
    /// waits in the pending buffer until the indexer adds it to the graph.
    pub fn set(&mut self, slot: u64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dims);
        if let Some(dirty) = &mut self.dirty {
            dirty.insert(slot);
        }
        if let Some(slab) = &mut self.slab {
            let start = slot as usize * self.dims;
            if slab.len() < start + self.dims {
                slab.resize(start + self.dims, 0.0);
            }
            slab[start..start + self.dims].copy_from_slice(vector);
            if self.metric == Metric::Cos {
                if self.inverse_norms.len() <= slot as usize {
                    self.inverse_norms.resize(slot as usize + 1, 0.0);
                }
                self.inverse_norms[slot as usize] = inverse_norm(vector);
            }
        }
        if let Some(graph) = &mut self.graph {
            graph.kill(slot);
            self.pending.put(slot, vector);
        }
    }

    /// Forgets the vector of `slot`.
    pub fn remove(&mut self, slot: u64) {
        if let Some(dirty) = &mut self.dirty {
            dirty.insert(slot);
        }
        if let Some(slab) = &mut self.slab {
            let start = slot as usize * self.dims;
            if start < slab.len() {
                slab[start..start + self.dims].fill(0.0);
            }
        }
        if let Some(graph) = &mut self.graph {
            graph.kill(slot);
            self.pending.remove(slot);
        }
    }

    /// Copies the vector of `slot` into `out` (lossy when the graph quantises).
    pub fn get(&self, slot: u64, out: &mut [f32]) -> bool {
        if let Some(slab) = &self.slab {
            let start = slot as usize * self.dims;
            if start + self.dims <= slab.len() {
                out.copy_from_slice(&slab[start..start + self.dims]);
                return true;
            }
            return false;
        }
        if let Some(row) = self.pending.row(slot) {
            out.copy_from_slice(row);
            return true;
        }
        if let Some(graph) = &self.graph {
            let _permit = self.permits.acquire();
            return graph.get(slot, out);
        }
        false
    }

    /// Exact k-NN over the slots for which `accept` holds, iterating `slots`.
    pub fn exact_search(
        &self,
        query: &[f32],
        k: usize,
        slots: impl Iterator<Item = u64>,
        accept: impl Fn(u64) -> bool,
    ) -> Vec<Neighbor> {
        let mut top = TopK::new(k);
        if let Some(slab) = &self.slab {
            let query_inverse_norm = inverse_norm(query);
            for slot in slots {
                let start = slot as usize * self.dims;
                if start + self.dims > slab.len() {
                    continue;
                }
                let row = &slab[start..start + self.dims];
                let d = match self.metric {
                    Metric::Cos => 1.0 - dot(query, row) * query_inverse_norm * self.inverse_norms[slot as usize],
                    metric => distance(metric, query, row),
                };
                // The distance is cheaper than a metadata filter: ask the filter last.
                if top.would_take(d) && accept(slot) {
                    top.offer(slot, d);
                }
            }
        } else {
            let mut buf = vec![0f32; self.dims];
            for slot in slots {
                if accept(slot) && self.get(slot, &mut buf) {
                    top.offer(slot, distance(self.metric, query, &buf));
                }
            }
        }
        top.into_sorted()
    }

    /// Approximate k-NN: the graph plus an exact scan of the pending vectors, keeping only slots
    /// for which `accept` holds. Returns `None` in exact mode.
    pub fn graph_search(
        &self,
        query: &[f32],
        k: usize,
        accept: impl Fn(u64) -> bool,
    ) -> Option<Result<Vec<Neighbor>, String>> {
        let graph = self.graph.as_ref()?;
        let from_graph = {
            let _permit = self.permits.acquire();
            graph.search(query, k, &accept)
        };
        Some(from_graph.map(|found| {
            let mut top = TopK::new(k);
            for n in found {
                top.offer(n.slot, n.distance);
            }
            for (i, slot) in self.pending.slots.iter().enumerate() {
                let row = &self.pending.rows[i * self.dims..(i + 1) * self.dims];
                let d = distance(self.metric, query, row);
                if top.would_take(d) && accept(*slot) {
                    top.offer(*slot, d);
                }
            }
            top.into_sorted()
        }))
    }

    /// Whether a background (re)build should start.
    pub fn wants_build(&self, live: usize, threshold: usize) -> bool {
        !self.is_building()
            && match &self.graph {
                None => live >= threshold,
                Some(graph) => graph.wants_rebuild(),
            }
    }

    /// Starts tracking changed slots for a background build; returns a copy of the live rows.
    pub fn begin_build(&mut self, live_slots: impl Iterator<Item = u64>) -> Vec<(u64, Vec<f32>)> {
        self.dirty = Some(HashSet::new());
        live_slots
            .filter_map(|slot| {
                let mut row = vec![0f32; self.dims];
                self.get(slot, &mut row).then_some((slot, row))
            })
            .collect()
    }

    /// Abandons a background build.
    pub fn abort_build(&mut self) {
        self.dirty = None;
    }

    /// Swaps in a graph built from the copy `begin_build` returned. Slots changed since then go
    /// to the pending buffer (the indexer adds them); other pending rows are in the new graph.
    pub fn install_graph(&mut self, mut graph: Graph, is_live: impl Fn(u64) -> bool) {
        let dirty = self.dirty.take().unwrap_or_default();
        let mut row = vec![0f32; self.dims];
        let mut pending = Pending::new(self.dims);
        for slot in dirty {
            graph.kill(slot);
            if is_live(slot) && self.get(slot, &mut row) {
                pending.put(slot, &row);
            }
        }
        self.pending = pending;
        self.graph = Some(graph);
        self.graph_epoch += 1;
        self.index_changes += 1;
        self.slab = None;
        self.inverse_norms = Vec::new();
    }

    /// Puts a vector straight into the pending buffer (snapshot load of vectors not yet in the
    /// graph).
    pub fn restore_pending(&mut self, slot: u64, vector: &[f32]) {
        self.pending.put(slot, vector);
    }

    /// Claims the indexer role if there is pending work and no indexer runs.
    pub fn claim_indexer(&mut self) -> bool {
        if self.graph.is_some() && self.pending.len() > 0 && !self.indexing {
            self.indexing = true;
            true
        } else {
            false
        }
    }

    /// Takes up to `max` pending rows for the indexer and reserves graph capacity and node keys
    /// for them. Returns `None` (and gives up the indexer role) when there is nothing to do.
    pub fn begin_indexing(&mut self, max: usize) -> Result<Option<IndexBatch>, String> {
        let Some(graph) = &mut self.graph else {
            self.indexing = false;
            return Ok(None);
        };
        if self.pending.len() == 0 {
            self.indexing = false;
            return Ok(None);
        }
        let n = self.pending.len().min(max);
        let rows: Vec<(u64, u64, Vec<f32>)> = (0..n)
            .map(|i| {
                let slot = self.pending.slots[i];
                (
                    slot,
                    self.pending.versions[i],
                    self.pending.rows[i * self.dims..(i + 1) * self.dims].to_vec(),
                )
            })
            .collect();
        // Capacity grows only here, under the store's write lock, so it never races a search.
        ensure_capacity(&graph.index, n)?;
        let first_node = graph.next_node();
        let recalibrate = (graph.wants_calibration() && n >= CALIBRATION_QUERIES / 4)
            .then(|| (graph.slot_of_node.clone(), graph.dead));
        graph.slot_of_node.resize(graph.slot_of_node.len() + n, NONE);
        Ok(Some(IndexBatch {
            index: graph.index.clone(),
            permits: self.permits.clone(),
            epoch: self.graph_epoch,
            first_node,
            rows,
            recalibrate,
        }))
    }

    /// Publishes the nodes of an added batch: each row still pending with the same version
    /// leaves the buffer and is found through the graph from now on; the rest are dead nodes.
    pub fn finish_indexing(&mut self, batch: IndexBatch) {
        let Some(graph) = &mut self.graph else { return };
        if batch.epoch != self.graph_epoch {
            return;
        }
        self.index_changes += 1;
        for (i, (slot, version, _)) in batch.rows.iter().enumerate() {
            let node = batch.first_node + i as u64;
            if self.pending.version(*slot) == Some(*version) {
                graph.publish(*slot, node);
                self.pending.remove(*slot);
            } else {
                graph.dead += 1;
            }
        }
    }

    /// Adopts a breadth measured by [`IndexBatch::calibrate`] on the current graph.
    pub fn recalibrated(&mut self, epoch_of: &IndexBatch, calibration: Calibration) {
        let Some(graph) = &mut self.graph else { return };
        if epoch_of.epoch != self.graph_epoch {
            return;
        }
        graph.ef = calibration.ef_search;
        graph.calibration = Some(calibration);
        self.index_changes += 1;
    }

    /// Gives up the indexer role after a failure.
    pub fn stop_indexing(&mut self) {
        self.indexing = false;
    }

    pub fn is_indexing(&self) -> bool {
        self.indexing
    }

    /// Bytes of memory held, estimated.
    pub fn memory_bytes(&self) -> usize {
        let slab = self.slab.as_ref().map_or(0, |s| s.capacity() * 4) + self.inverse_norms.capacity() * 4;
        let pending = self.pending.rows.capacity() * 4 + self.pending.slots.capacity() * 40;
        let graph = self.graph.as_ref().map_or(0, |g| {
            g.estimated_bytes() + (g.node_of_slot.capacity() + g.slot_of_node.capacity()) * 8
        });
        slab + pending + graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_their_definitions() {
        let a = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3.0];
        let b = [0.0, 1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, -1.0];
        let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((distance(Metric::L2, &a, &b) - naive_l2).abs() < 1e-5);
        assert!((distance(Metric::Ip, &a, &b) - (1.0 - naive_dot)).abs() < 1e-5);
        assert!((distance(Metric::Cos, &a, &b) - (1.0 - naive_dot / (na * nb))).abs() < 1e-5);
    }

    #[test]
    fn dispatched_kernels_agree_with_the_portable_ones_on_embedding_sized_vectors() {
        let mut generator = tvs_synth::EmbeddingLike::new(384, 3);
        let rows: Vec<Vec<f32>> = (0..50).map(|_| generator.next_vector()).collect();
        for pair in rows.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            for metric in [Metric::L2, Metric::Ip, Metric::Cos] {
                let (fast, reference) = (distance(metric, a, b), portable::distance(metric, a, b));
                assert!((fast - reference).abs() < 1e-5, "{metric:?}: {fast} vs {reference}");
            }
            assert!((dot(a, b) - portable::dot(a, b)).abs() < 1e-5);
        }
        // Lengths that are not a multiple of any SIMD width.
        let (a, b) = (&rows[0][..13], &rows[1][..13]);
        assert!((distance(Metric::L2, a, b) - portable::distance(Metric::L2, a, b)).abs() < 1e-5);
    }

    #[test]
    fn exact_search_returns_the_nearest_in_order() {
        let mut v = Vectors::exact(2, Metric::L2);
        for (slot, x) in [(0u64, 0.0f32), (1, 5.0), (2, 1.0), (3, 3.0)] {
            v.set(slot, &[x, 0.0]);
        }
        let hits = v.exact_search(&[0.9, 0.0], 3, 0..4, |_| true);
        assert_eq!(hits.iter().map(|n| n.slot).collect::<Vec<_>>(), [2, 0, 3]);
        let odd = v.exact_search(&[0.9, 0.0], 3, 0..4, |s| s % 2 == 1);
        assert_eq!(odd.iter().map(|n| n.slot).collect::<Vec<_>>(), [3, 1]);
    }
}
