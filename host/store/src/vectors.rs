//! Vector storage and k-NN search for one store: an exact scan over a slab of f32 rows for
//! small stores, an HNSW graph (usearch) past a threshold.
//!
//! Documents are addressed by *slot*: a dense number the store assigns and reuses after deletes,
//! so the slab stays compact. In the graph each version of a vector is a new node (see
//! [`Graph`] for why nodes are never removed from usearch).
//!
//! Invariants:
//! - In exact mode `slab` holds every live vector; `graph` is `None`.
//! - In HNSW mode every live vector is either published in `graph` or waits in `pending`
//!   (searched exactly) until the store's indexer thread adds it, so writers never wait for graph
//!   insertions. A slot is never in both. Over an f32 graph `slab` is dropped (the graph holds
//!   the vectors: memory stays near 1× them); over a quantising graph (i8, f16) `slab` still
//!   holds every live vector, the exact rows a search re-ranks the graph's candidates with.
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

use crate::config::{
    DEFAULT_EF_SEARCH, EF_SEARCH_CALIBRATED, GRAPH_PARTS_AUTO, MAX_GRAPH_PARTS, Metric, RECALL_TARGET, ScalarKind,
    StoreConfig,
};
use crate::slab::Slab;

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
        // 32 links a node: on 200k 384-d i8 graphs here recall@10 0.948 at ef 96 (1,429 QPS)
        // where 16 links needed ef 192 for 0.950 (1,064 QPS); the build took 96 s instead of 76.
        connectivity: 32,
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

/// A usearch index, and for one viewed from a mapped snapshot the mapping it reads (usearch
/// keeps pointers into it). The index is declared first so it is dropped before the mapping.
pub struct GraphIndex {
    index: Index,
    view: Option<memmap2::MmapMut>,
}

impl GraphIndex {
    pub fn owned(index: Index) -> Self {
        GraphIndex { index, view: None }
    }

    /// An index over the graph serialised in `map[..len]` (a snapshot file checked by the
    /// caller): opening costs page-table entries instead of a copy. usearch cannot add to a view;
    /// [`GraphIndex::to_owned_index`] makes a copy that can grow.
    #[allow(unsafe_code)]
    pub fn viewed(index: Index, map: memmap2::MmapMut, len: usize) -> Result<Self, String> {
        // SAFETY: the mapping moves into the returned value beside the index and is dropped
        // after it (field order); moving the `MmapMut` handle does not move the mapped bytes.
        unsafe { index.view_from_buffer(&map[..len]) }.map_err(|e| e.to_string())?;
        Ok(GraphIndex { index, view: Some(map) })
    }

    pub fn is_view(&self) -> bool {
        self.view.is_some()
    }

    /// A copy of this index in memory of its own, ready for adds and searches like a loaded one.
    pub fn to_owned_index(&self) -> Result<Index, String> {
        let options = IndexOptions {
            dimensions: self.index.dimensions(),
            metric: self.index.metric_kind(),
            quantization: self.index.scalar_kind(),
            connectivity: self.index.connectivity(),
            expansion_add: self.index.expansion_add(),
            expansion_search: 1,
            multi: false,
        };
        let copy = Index::new(&options).map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; self.index.serialized_length()];
        self.index.save_to_buffer(&mut bytes).map_err(|e| e.to_string())?;
        copy.load_from_buffer(&bytes).map_err(|e| e.to_string())?;
        prepare_loaded(&copy)?;
        Ok(copy)
    }
}

impl std::fmt::Debug for GraphIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphIndex")
            .field("nodes", &self.index.size())
            .field("view", &self.view.is_some())
            .finish()
    }
}

impl std::ops::Deref for GraphIndex {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.index
    }
}

/// Readies an index read from a snapshot for tvs's searches: breadth passed per search (see
/// [`new_graph`]) and thread contexts reserved again (a load adopts the file's limits).
pub fn prepare_loaded(index: &Index) -> Result<(), String> {
    index.change_expansion_search(1);
    index
        .reserve_capacity_and_threads(index.capacity().max(index.size()), graph_threads())
        .map_err(|e| e.to_string())
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

/// Rows from which a graph is built as two parts, each searched on its own thread and the
/// candidates merged. Each half is smaller and searched as wide, so the merged search explores
/// more of the data per unit of wall time: on 384-d i8 vectors here (`cargo bench -p tvs-store
/// --bench graph`, calibrated breadth, one client) 10k rows went from 24,434 to 28,570 QPS,
/// 20k from 10,954 to 19,102, and 200k from 904 (recall@10 0.972) to 1,448 (0.974); the 200k
/// build from 123 s to 45 s. It equals the default `hnsw_threshold`, so a tenant's first graph is
/// already split and grows by the indexer without a rebuild.
pub const SPLIT_FROM: usize = 10_000;

/// Parts a graph over `rows` vectors is built as: the config's, or when it leaves the choice
/// two from [`SPLIT_FROM`] rows on machines with a second core, else one.
fn parts_for(config: &StoreConfig, rows: usize) -> usize {
    if config.graph_parts != GRAPH_PARTS_AUTO {
        return config.graph_parts.min(MAX_GRAPH_PARTS);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if rows >= SPLIT_FROM && cores >= 2 { 2 } else { 1 }
}

/// Threads that search a graph's second and later parts: a pool of tvs's own, so a search never
/// queues behind other work on rayon's global pool (the embedding model's matrix products).
/// `None` when it cannot be started; the parts are then searched one after the other.
fn parts_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tvs-graph-part-{i}"))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no threads for graph parts; parts are searched in turn"))
            .ok()
    })
    .as_ref()
}

/// `work` done on every part of a graph, results in part order: the first part on the calling
/// thread, the others on [`parts_pool`] meanwhile (each part's share of a search, re-rank
/// included, runs where its graph walk ran, so only the final merge is serial).
fn on_parts<T: Send>(parts: &[Arc<GraphIndex>], work: impl Fn(&Index) -> T + Sync) -> Vec<T> {
    if let [only] = parts {
        return vec![work(only)];
    }
    let mut rest: Vec<Option<T>> = parts.iter().skip(1).map(|_| None).collect();
    let first = match parts_pool() {
        Some(pool) => pool.in_place_scope(|scope| {
            for (part, out) in parts.iter().skip(1).zip(rest.iter_mut()) {
                let work = &work;
                scope.spawn(move |_| *out = Some(work(part)));
            }
            parts.first().map(|part| work(part))
        }),
        None => {
            for (part, out) in parts.iter().skip(1).zip(rest.iter_mut()) {
                *out = Some(work(part));
            }
            parts.first().map(|part| work(part))
        }
    };
    first.into_iter().chain(rest.into_iter().flatten()).collect()
}

/// An HNSW graph whose nodes are never removed from usearch, filled by one thread at a time.
///
/// usearch reuses the node of a removed key for the next insertion, and that update path can
/// leave the new node unreachable from the graph (seen with usearch 2.26.6: after a few hundred
/// remove+add cycles on 1,200 vectors, several exact self-queries missed their own vector while
/// `exact_search` found it). So a changed or deleted document only *kills* its node here: the node
/// stays in the graph as a routing point, searches skip it through the filter, and the store
/// rebuilds the graph in the background once dead nodes pile up. Concurrent `add`s showed the
/// same symptom, so only one thread ever adds to a graph.
///
/// A graph that quantises (i8, f16) only proposes candidates: the store keeps the f32 rows
/// beside it and a search re-ranks all `ef` candidates by their exact distance. i8 graphs get
/// their codes from tvs ([`Codes`]), not from usearch's cast, which divides each vector by its
/// own norm and so loses L2 order between vectors of different lengths.
pub struct Graph {
    /// The graph's parts: node `n` lives in `parts[n % parts.len()]` (see [`SPLIT_FROM`]).
    parts: Vec<Arc<GraphIndex>>,
    metric: Metric,
    codes: Codes,
    node_of_slot: Vec<u64>,
    slot_of_node: Vec<u64>,
    dead: usize,
    /// Search breadth; calibrated when the store asked for it ([`Calibration`]).
    ef: usize,
    calibration: Option<Calibration>,
    /// Whether the config asks for calibration (and re-calibration as the graph grows).
    auto: bool,
}

/// How vectors become graph entries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codes {
    /// f32 handed to usearch as they are (stored at the index's width). Also i8 graphs saved
    /// before tvs chose the codes: their nodes hold usearch's own cast, so queries must too.
    Usearch,
    /// i8 codes `round(x · scale · 127)` with one scale for the whole graph: a uniform scale keeps
    /// L2 and inner-product order (up to rounding) and spends the whole i8 range on the data.
    Scaled(f32),
}

impl Codes {
    /// Codes for an i8 graph over `rows`: the scale maps the 99.99th percentile of the
    /// components' magnitudes to 1 (a rare larger one is clipped; the re-rank corrects it),
    /// measured on about a million components from rows spread over the whole build.
    pub fn for_rows(rows: &[(u64, Vec<f32>)]) -> Codes {
        const SAMPLE: usize = 1 << 20;
        let components: usize = rows.iter().map(|(_, v)| v.len()).sum();
        let step = (components / SAMPLE).max(1);
        let mut magnitudes: Vec<f32> = rows
            .iter()
            .step_by(step)
            .flat_map(|(_, v)| v.iter().map(|x| x.abs()))
            .collect();
        if magnitudes.is_empty() {
            return Codes::Scaled(1.0);
        }
        let at = ((magnitudes.len() as f64 * 0.9999) as usize).min(magnitudes.len() - 1);
        let (_, high, _) = magnitudes.select_nth_unstable_by(at, f32::total_cmp);
        Codes::Scaled(if *high > 0.0 { 1.0 / *high } else { 1.0 })
    }

    /// The graph scale recorded in a snapshot (`None`: [`Codes::Usearch`]).
    pub fn scale(self) -> Option<f32> {
        match self {
            Codes::Usearch => None,
            Codes::Scaled(scale) => Some(scale),
        }
    }

    fn encode(scale: f32, vector: &[f32], out: &mut Vec<i8>) {
        out.clear();
        out.extend(
            vector
                .iter()
                .map(|x| (x * scale * 127.0).round().clamp(-127.0, 127.0) as i8),
        );
    }

    fn add(self, index: &Index, key: u64, vector: &[f32], buf: &mut Vec<i8>) -> Result<(), String> {
        match self {
            Codes::Usearch => index.add(key, vector),
            Codes::Scaled(scale) => {
                Self::encode(scale, vector, buf);
                index.add(key, buf.as_slice())
            }
        }
        .map_err(|e| e.to_string())
    }
}

/// How a graph's search breadth was chosen: the recall@10 measured at it on vectors held out of
/// the graph, and the graph's size then.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub ef_search: usize,
    pub recall: f32,
    pub nodes: usize,
}

/// Breadths a calibration tries, narrowest first: steps of 8 where graphs of two parts land
/// (recall@10 at 200k went 0.931, 0.959, 0.974 at 48, 64, 80: a step of 16 there costs up to
/// a fifth of the QPS for recall nobody asked for).
const EF_LADDER: [usize; 21] = [
    16, 24, 32, 40, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1024,
];
/// Vectors held out of a graph build to calibrate it.
const CALIBRATION_QUERIES: usize = 300;
/// Fewer rows than this: the graph is not calibrated (its searches are cheap anyway).
const CALIBRATION_MIN_ROWS: usize = 2_000;
/// Neighbours the recall is measured on.
pub const CALIBRATION_K: usize = 10;
/// Dead nodes beyond which a growing graph is not re-calibrated (truth would need that many
/// more exact results; the rebuild that dead nodes bring calibrates anyway).
const CALIBRATION_MAX_DEAD: usize = 1_000;
/// Measured recall must beat the target by this much: 300 queries × 10 neighbours measure it to
/// about ±0.004 (one standard error), and the graph grows up to 1.5× before the next
/// calibration. At 200k vectors a margin of 0.005 let fresh queries come out at 0.944 where the
/// held-out ones said 0.957, and 0.01 with calibration at each doubling gave 0.946 in the suite.
const CALIBRATION_MARGIN: f32 = 0.015;

/// The narrowest breadth on the ladder at which `answer(query, ef)` finds [`RECALL_TARGET`] (plus
/// the margin) of `truths`, the true nearest of each query, with the recall measured there (the
/// widest if none does). `None` when there is nothing to measure or `answer` fails.
pub fn climb_ladder(
    truths: &[Vec<u64>],
    nodes: usize,
    mut answer: impl FnMut(usize, usize) -> Option<Vec<u64>>,
) -> Option<Calibration> {
    let wanted: usize = truths.iter().map(Vec::len).sum();
    if wanted == 0 {
        return None;
    }
    let mut last = None;
    for ef in EF_LADDER {
        let mut found = 0usize;
        for (i, truth) in truths.iter().enumerate() {
            found += answer(i, ef)?
                .iter()
                .take(truth.len())
                .filter(|slot| truth.contains(slot))
                .count();
        }
        let calibration = Calibration {
            ef_search: ef,
            recall: found as f32 / wanted as f32,
            nodes,
        };
        if calibration.recall >= RECALL_TARGET + CALIBRATION_MARGIN {
            return Some(calibration);
        }
        last = Some(calibration);
    }
    last
}

/// The exact nearest `k` of `query` among `rows` (slot, vector), by brute force.
pub fn exact_top<'a>(
    metric: Metric,
    query: &[f32],
    k: usize,
    rows: impl Iterator<Item = (u64, &'a [f32])>,
) -> Vec<u64> {
    let mut top = TopK::new(k);
    for (slot, row) in rows {
        let d = distance(metric, query, row);
        if top.would_take(d) {
            top.offer(slot, d);
        }
    }
    top.into_sorted().into_iter().map(|n| n.slot).collect()
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.nodes())
            .field("parts", &self.parts.len())
            .field("dead", &self.dead)
            .field("codes", &self.codes)
            .finish()
    }
}

impl Graph {
    /// A graph over `rows`, node key = slot.
    /// When the config asks for calibration and there are enough rows, a sample is held out,
    /// the graph's breadth calibrated on it (recall of the whole search, re-rank included,
    /// against brute force over the rows), then the sample added.
    pub fn build(config: &StoreConfig, rows: &[(u64, Vec<f32>)]) -> Result<Graph, String> {
        Self::build_in_parts(config, rows, parts_for(config, rows.len()))
    }

    /// [`Graph::build`] with a given number of parts, built on a thread each (usearch's adds are
    /// only trusted from one thread per graph, see above).
    pub fn build_in_parts(config: &StoreConfig, rows: &[(u64, Vec<f32>)], parts: usize) -> Result<Graph, String> {
        let parts = parts.max(1);
        let indexes = (0..parts).map(|_| new_graph(config)).collect::<Result<Vec<_>, _>>()?;
        for index in &indexes {
            let share = rows.len() / parts + 1;
            ensure_capacity(index, share + share / 4)?;
        }
        let codes = match config.scalar {
            ScalarKind::I8 => Codes::for_rows(rows),
            ScalarKind::F32 | ScalarKind::F16 => Codes::Usearch,
        };
        let calibrating = config.ef_search == EF_SEARCH_CALIBRATED && rows.len() >= CALIBRATION_MIN_ROWS;
        let stride = if calibrating {
            rows.len() / CALIBRATION_QUERIES
        } else {
            usize::MAX
        };
        let held_out = |i: usize| i % stride == stride - 1;
        // Node = slot here, so a row goes to part `slot % parts`.
        let fill = |part: usize, index: &Index| -> Result<(), String> {
            let mut buf = Vec::new();
            for (i, (slot, vector)) in rows.iter().enumerate() {
                if !held_out(i) && *slot as usize % parts == part {
                    codes.add(index, *slot, vector, &mut buf)?;
                }
            }
            Ok(())
        };
        if parts == 1 {
            fill(0, &indexes[0])?;
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = indexes
                    .iter()
                    .enumerate()
                    .map(|(part, index)| scope.spawn(move || fill(part, index)))
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().unwrap_or_else(|_| Err("a graph build thread panicked".into())))
            })?;
        }
        let mut buf = Vec::new();
        let top = rows.iter().map(|(slot, _)| *slot + 1).max().unwrap_or(0) as usize;
        let mut node_of_slot = vec![NONE; top];
        let mut row_of_slot = vec![usize::MAX; top];
        for (i, (slot, _)) in rows.iter().enumerate() {
            row_of_slot[*slot as usize] = i;
            if !held_out(i) {
                node_of_slot[*slot as usize] = *slot;
            }
        }
        let mut graph = Graph {
            parts: indexes.into_iter().map(|i| Arc::new(GraphIndex::owned(i))).collect(),
            metric: config.metric,
            codes,
            slot_of_node: node_of_slot.clone(),
            node_of_slot,
            dead: 0,
            ef: breadth(config, None),
            calibration: None,
            auto: config.ef_search == EF_SEARCH_CALIBRATED,
        };
        if calibrating {
            let queries: Vec<&[f32]> = (0..rows.len())
                .filter(|i| held_out(*i))
                .map(|i| rows[i].1.as_slice())
                .collect();
            let in_graph = || {
                rows.iter()
                    .enumerate()
                    .filter(|(i, _)| !held_out(*i))
                    .map(|(_, (slot, v))| (*slot, v.as_slice()))
            };
            let truths: Vec<Vec<u64>> = queries
                .iter()
                .map(|q| exact_top(config.metric, q, CALIBRATION_K, in_graph()))
                .collect();
            let row_of = |slot: u64| {
                let i = *row_of_slot.get(slot as usize)?;
                rows.get(i).map(|(_, v)| v.as_slice())
            };
            let nodes = graph.nodes();
            let calibration = climb_ladder(&truths, nodes, |i, ef| {
                graph
                    .search_at(queries[i], CALIBRATION_K, ef, |_| true, row_of)
                    .ok()
                    .map(|found| found.into_iter().map(|n| n.slot).collect())
            });
            graph.set_calibration(config, calibration);
            for (i, (slot, vector)) in rows.iter().enumerate() {
                if held_out(i) {
                    codes.add(graph.part_of(*slot), *slot, vector, &mut buf)?;
                    graph.node_of_slot[*slot as usize] = *slot;
                    graph.slot_of_node[*slot as usize] = *slot;
                }
            }
        }
        Ok(graph)
    }

    /// Whether the graph has grown enough since its calibration (or to the size one starts at)
    /// to calibrate again; not with many dead nodes (a rebuild comes first).
    fn wants_calibration(&self) -> bool {
        let since = self.calibration.map_or(CALIBRATION_MIN_ROWS * 2 / 3, |c| c.nodes);
        self.auto && self.dead <= CALIBRATION_MAX_DEAD && 2 * self.nodes() >= 3 * since
    }

    /// The calibration this graph's breadth came from, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The breadth searches use.
    pub fn ef_search(&self) -> usize {
        self.ef
    }

    /// How the graph's entries were made from the vectors.
    pub fn codes(&self) -> Codes {
        self.codes
    }

    /// Whether searches re-rank the graph's candidates with exact f32 rows kept beside it.
    pub fn reranks(&self) -> bool {
        self.parts[0].scalar_kind() != usearch::ScalarKind::F32
    }

    /// Nodes in all parts, dead ones included.
    pub fn nodes(&self) -> usize {
        self.parts.iter().map(|p| p.size()).sum()
    }

    /// The usearch index holding `node`.
    fn part_of(&self, node: u64) -> &GraphIndex {
        &self.parts[(node % self.parts.len() as u64) as usize]
    }

    /// Sets the breadth from a snapshot's calibration (or the config's).
    pub fn set_calibration(&mut self, config: &StoreConfig, calibration: Option<Calibration>) {
        self.ef = breadth(config, calibration.as_ref());
        self.calibration = calibration;
        self.auto = config.ef_search == EF_SEARCH_CALIBRATED;
    }

    /// A graph loaded from a snapshot; `nodes` lists (slot, node) of the documents in it.
    pub fn restore(
        parts: Vec<GraphIndex>,
        metric: Metric,
        codes: Codes,
        nodes: impl Iterator<Item = (u64, u64)>,
        next_node: u64,
    ) -> Result<Graph, String> {
        let Some(first) = parts.first() else {
            return Err("a graph snapshot without parts".into());
        };
        if matches!(codes, Codes::Scaled(_)) && first.scalar_kind() != usearch::ScalarKind::I8 {
            return Err("a graph scale is recorded for a graph that is not i8".into());
        }
        if parts.iter().any(|p| {
            p.scalar_kind() != first.scalar_kind()
                || p.dimensions() != first.dimensions()
                || p.metric_kind() != first.metric_kind()
        }) {
            return Err("a graph's parts differ in kind".into());
        }
        let mut graph = Graph {
            parts: parts.into_iter().map(Arc::new).collect(),
            metric,
            codes,
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
        graph.dead = graph.nodes().saturating_sub(live);
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

    /// The graph's usearch indexes; node `n` is in the one at `n % len`.
    pub fn parts(&self) -> impl ExactSizeIterator<Item = &Index> {
        self.parts.iter().map(|p| &***p)
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

    /// Published slots, in slot order.
    fn published(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.node_of_slot.len() as u64).filter(|slot| self.node_of_slot[*slot as usize] != NONE)
    }

    fn get(&self, slot: u64, out: &mut [f32]) -> bool {
        self.node(slot)
            .is_some_and(|node| matches!(self.part_of(node).get(node, out), Ok(1)))
    }

    /// The nearest `k` published slots to `query` for which `accept` holds, searching `ef` wide.
    /// A quantising graph's candidates are all re-ranked by their exact distance to the f32 rows
    /// `row_of` returns (a candidate without one is dropped).
    fn search_at<'r>(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u64) -> bool + Sync,
        row_of: impl Fn(u64) -> Option<&'r [f32]> + Sync,
    ) -> Result<Vec<Neighbor>, String> {
        let slot_of = |node: u64| self.slot_of_node.get(node as usize).copied().filter(|s| *s != NONE);
        let filter = |node: u64| slot_of(node).is_some_and(&accept);
        let mut code = Vec::new();
        if let Codes::Scaled(scale) = self.codes {
            Codes::encode(scale, query, &mut code);
        }
        let reranks = self.reranks();
        // One part's nearest `k`: asking usearch for `ef` results makes it search that wide.
        let part_top = |index: &Index| -> Result<Vec<Neighbor>, String> {
            let found = match self.codes {
                Codes::Usearch => index.filtered_search(query, k.max(ef), filter),
                Codes::Scaled(_) => index.filtered_search(code.as_slice(), k.max(ef), filter),
            }
            .map_err(|e| e.to_string())?;
            let candidates = (found.keys.into_iter().zip(found.distances))
                .filter_map(|(node, distance)| Some((slot_of(node)?, distance)));
            let mut top = TopK::new(k);
            for (slot, usearch_distance) in candidates {
                if !reranks {
                    top.offer(slot, usearch_distance);
                } else if let Some(row) = row_of(slot) {
                    top.offer(slot, distance(self.metric, query, row));
                }
            }
            Ok(top.into_sorted())
        };
        let mut parts = on_parts(&self.parts, part_top).into_iter();
        let first = parts.next().unwrap_or_else(|| Ok(Vec::new()))?;
        if parts.len() == 0 {
            return Ok(first);
        }
        let mut top = TopK::new(k);
        for found in std::iter::once(Ok(first)).chain(parts) {
            for n in found? {
                top.offer(n.slot, n.distance);
            }
        }
        Ok(top.into_sorted())
    }

    /// Resident bytes of the graph's nodes: vectors at the stored scalar width plus the base
    /// layer's links. usearch's own `memory_usage` counts reserved arenas that are mostly never
    /// touched (it reported 3.45x the raw vectors where the process RSS grew by 1.13x).
    pub fn estimated_bytes(&self) -> usize {
        let first = &self.parts[0];
        let scalar_bytes = match first.scalar_kind() {
            usearch::ScalarKind::F64 => 8,
            usearch::ScalarKind::F32 => 4,
            usearch::ScalarKind::F16 | usearch::ScalarKind::BF16 => 2,
            _ => 1,
        };
        let per_node = first.dimensions() * scalar_bytes + 2 * first.connectivity() * 4 + 16;
        self.nodes() * per_node
    }

    /// Whether dead nodes are numerous enough to rebuild: at least 1,000 and half the live ones.
    pub fn wants_rebuild(&self) -> bool {
        let live = self.nodes().saturating_sub(self.dead);
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
    parts: Vec<Arc<GraphIndex>>,
    codes: Codes,
    permits: Arc<Permits>,
    epoch: u64,
    first_node: u64,
    rows: Vec<(u64, u64, Vec<f32>)>,
    /// Whether the graph is due for re-calibration (with this batch's rows as queries).
    recalibrate: bool,
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
        let mut buf = Vec::new();
        for (i, (_, _, row)) in self.rows.iter().enumerate() {
            let node = self.first_node + i as u64;
            let part = &self.parts[(node % self.parts.len() as u64) as usize];
            self.codes.add(part, node, row, &mut buf)?;
        }
        Ok(())
    }

    /// When the graph is due for re-calibration: this batch's vectors (not in the graph yet),
    /// the held-out queries for [`Vectors::calibration_truth`] and [`Vectors::calibration_answer`].
    pub fn calibration_queries(&self) -> Option<Vec<&[f32]>> {
        self.recalibrate.then(|| {
            self.rows
                .iter()
                .take(CALIBRATION_QUERIES)
                .map(|(_, _, v)| v.as_slice())
                .collect()
        })
    }

    /// The graph this batch belongs to ([`Vectors::graph_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
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
    slab: Option<Slab>,
    /// Per-slot `1/|v|` for cosine stores in exact mode, so a scan costs one dot product a row.
    /// Not kept in HNSW mode (the scan there only serves selective filters).
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
            .field("slab_rows", &self.slab.as_ref().map(Slab::rows))
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
            slab: Some(Slab::new(dims)),
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

    /// Whether rows from a damaged snapshot file were withheld ([`Slab::is_damaged`]).
    pub fn is_damaged(&self) -> bool {
        self.slab.as_ref().is_some_and(Slab::is_damaged)
    }

    /// The f32 rows: every live vector in exact mode and beside a quantising graph.
    pub fn slab(&self) -> Option<&Slab> {
        self.slab.as_ref()
    }

    /// Replaces the slab wholesale (snapshot load).
    pub fn set_slab(&mut self, slab: Slab) {
        self.inverse_norms = if self.metric == Metric::Cos && self.graph.is_none() {
            slab.iter().map(|(_, row)| inverse_norm(row)).collect()
        } else {
            Vec::new()
        };
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
            slab.set(slot, vector);
            if self.metric == Metric::Cos && self.graph.is_none() {
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
            slab.clear(slot);
        }
        if let Some(graph) = &mut self.graph {
            graph.kill(slot);
            self.pending.remove(slot);
        }
    }

    /// Copies the vector of `slot` into `out`.
    pub fn get(&self, slot: u64, out: &mut [f32]) -> bool {
        if let Some(slab) = &self.slab {
            return slab.row(slot).map(|row| out.copy_from_slice(row)).is_some();
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
            // Rows straight from the two runs where no lazy check applies: the scan costs a
            // distance a row, not a lookup.
            let runs = slab.runs();
            let dims = self.dims;
            let row_of = |slot: u64| -> Option<&[f32]> {
                match runs {
                    Some((mapped, owned)) => {
                        let start = (slot as usize).checked_mul(dims)?;
                        match mapped.get(start..start + dims) {
                            Some(row) => Some(row),
                            None => owned.get(start - mapped.len()..start - mapped.len() + dims),
                        }
                    }
                    None => slab.row(slot),
                }
            };
            for slot in slots {
                let Some(row) = row_of(slot) else { continue };
                let d = match (self.metric, self.inverse_norms.get(slot as usize)) {
                    (Metric::Cos, Some(row_inverse_norm)) => {
                        1.0 - dot(query, row) * query_inverse_norm * row_inverse_norm
                    }
                    (metric, _) => distance(metric, query, row),
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
        accept: impl Fn(u64) -> bool + Sync,
    ) -> Option<Result<Vec<Neighbor>, String>> {
        let graph = self.graph.as_ref()?;
        let from_graph = {
            let _permit = self.permits.acquire();
            graph.search_at(query, k, graph.ef, &accept, |slot| self.slab_row(slot))
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

    fn slab_row(&self, slot: u64) -> Option<&[f32]> {
        self.slab.as_ref()?.row(slot)
    }

    /// Bumped whenever the graph is replaced; see [`IndexBatch::epoch`].
    pub fn graph_epoch(&self) -> u64 {
        self.graph_epoch
    }

    /// The graph of `epoch` and its node count, if it is still the store's.
    fn graph_of(&self, epoch: u64) -> Option<&Graph> {
        self.graph.as_ref().filter(|_| epoch == self.graph_epoch)
    }

    /// The true nearest `k` published slots of `query` in the graph of `epoch` (`None` once
    /// that graph is replaced): brute force over the f32 rows beside a quantising graph, usearch's
    /// exact search in an f32 one. For re-calibration; holds the caller's lock for one scan.
    pub fn calibration_truth(&self, epoch: u64, query: &[f32], k: usize) -> Option<Vec<u64>> {
        let graph = self.graph_of(epoch)?;
        if graph.reranks() {
            let rows = graph.published().filter_map(|slot| Some((slot, self.slab_row(slot)?)));
            return Some(exact_top(self.metric, query, k, rows));
        }
        let _permit = self.permits.acquire();
        let slot_of = |node: u64| graph.slot_of_node.get(node as usize).copied().filter(|s| *s != NONE);
        let mut top = TopK::new(k);
        for found in on_parts(&graph.parts, |index| index.exact_search(query, k + graph.dead)) {
            let found = found.ok()?;
            for (node, distance) in found.keys.into_iter().zip(found.distances) {
                if let Some(slot) = slot_of(node) {
                    top.offer(slot, distance);
                }
            }
        }
        Some(top.into_sorted().into_iter().map(|n| n.slot).collect())
    }

    /// The graph of `epoch`'s answer for `query` at breadth `ef`, without pending vectors.
    pub fn calibration_answer(&self, epoch: u64, query: &[f32], k: usize, ef: usize) -> Option<Vec<u64>> {
        let graph = self.graph_of(epoch)?;
        let _permit = self.permits.acquire();
        let found = graph
            .search_at(query, k, ef, |_| true, |slot| self.slab_row(slot))
            .ok()?;
        Some(found.into_iter().map(|n| n.slot).collect())
    }

    /// Nodes in the graph of `epoch`.
    pub fn graph_nodes(&self, epoch: u64) -> Option<usize> {
        self.graph_of(epoch).map(Graph::nodes)
    }

    /// Whether a background (re)build should start: the first graph at the config's threshold,
    /// a new one when dead nodes pile up, or when a graph has fewer parts than one built now
    /// would (one first built below [`SPLIT_FROM`] under a lower threshold, or saved whole by an
    /// older tvs).
    pub fn wants_build(&self, live: usize, config: &StoreConfig) -> bool {
        !self.is_building()
            && match &self.graph {
                None => live >= config.hnsw_threshold,
                Some(graph) => graph.wants_rebuild() || graph.parts.len() < parts_for(config, live),
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
        if !graph.reranks() {
            self.slab = None;
        }
        self.inverse_norms = Vec::new();
        self.graph = Some(graph);
        self.graph_epoch += 1;
        self.index_changes += 1;
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
        // A batch that re-calibrates takes up to a full sample where that many are waiting: 75
        // queries measure recall@10 to about ±0.007, 300 to ±0.0035, and the noisier estimate
        // makes the margin pick wider (slower) breadths.
        let due = graph.wants_calibration();
        let n = self
            .pending
            .len()
            .min(if due { max.max(CALIBRATION_QUERIES) } else { max });
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
        for part in &mut graph.parts {
            if part.is_view() {
                // The indexer copies a viewed graph before asking (see `Vectors::viewed_parts`);
                // this only runs when that copy lost a race.
                *part = Arc::new(GraphIndex::owned(part.to_owned_index()?));
            }
            // Capacity grows only here, under the store's write lock, so it never races a search.
            ensure_capacity(part, n)?;
        }
        let first_node = graph.next_node();
        let recalibrate = due && n >= CALIBRATION_QUERIES / 4;
        graph.slot_of_node.resize(graph.slot_of_node.len() + n, NONE);
        Ok(Some(IndexBatch {
            parts: graph.parts.clone(),
            codes: graph.codes,
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

    /// The graph's parts that are views of a snapshot, each as (graph epoch, position, part):
    /// the indexer copies them without the store's lock ([`GraphIndex::to_owned_index`]) before
    /// adding to them.
    pub fn viewed_parts(&self) -> Vec<(u64, usize, Arc<GraphIndex>)> {
        let Some(graph) = &self.graph else { return Vec::new() };
        (graph.parts.iter().enumerate())
            .filter(|(_, p)| p.is_view())
            .map(|(i, p)| (self.graph_epoch, i, p.clone()))
            .collect()
    }

    /// Replaces viewed part `part` of the graph of `epoch` by its copy (ignored once replaced).
    pub fn adopt_owned_part(&mut self, epoch: u64, part: usize, index: Index) {
        if epoch != self.graph_epoch {
            return;
        }
        if let Some(slot) = self
            .graph
            .as_mut()
            .and_then(|g| g.parts.get_mut(part))
            .filter(|p| p.is_view())
        {
            *slot = Arc::new(GraphIndex::owned(index));
        }
    }

    /// Adopts a breadth measured on the graph of `epoch` (ignored once it is replaced).
    pub fn recalibrated(&mut self, epoch: u64, calibration: Calibration) {
        let Some(graph) = &mut self.graph else { return };
        if epoch != self.graph_epoch {
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
        let slab = self.slab.as_ref().map_or(0, Slab::memory_bytes) + self.inverse_norms.capacity() * 4;
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
