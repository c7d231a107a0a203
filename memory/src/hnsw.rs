//! HNSW (Malkov and Yashunin, 2018) for the ReasoningBank, replacing hora (ADR 0013):
//! vectors in one flat array, neighbour lists in flat fixed-capacity arrays, level
//! multiplier 1/ln M, the paper's neighbour-selection heuristic, a visited list reset by
//! generation counter, and a squared-L2 distance that runs on AVX-512 or AVX2/FMA when
//! the CPU has them.
//! One writer inserts; any number of readers search (`&self`).

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Squared Euclidean distance, on AVX-512 or AVX2/FMA where the CPU has them.
pub fn l2(a: &[f32], b: &[f32]) -> f32 {
    l2_for_this_cpu()(a, b)
}

/// The squared-L2 implementation for this CPU.
fn l2_for_this_cpu() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return l2_avx512_checked;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return l2_avx2_checked;
        }
    }
    l2_portable
}

#[cfg(target_arch = "x86_64")]
fn l2_avx512_checked(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only handed out by `l2_for_this_cpu` after it found AVX-512F on this CPU,
    // the one requirement of calling a function compiled for it.
    #[allow(unsafe_code)]
    unsafe {
        l2_avx512(a, b)
    }
}

/// 32 floats a step in two independent 16-lane sums (one sum would wait on the previous
/// step's latency every step), as hnswlib's AVX-512 distance runs when built for the CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn l2_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps,
        _mm512_sub_ps,
    };
    let n = a.len().min(b.len());
    let steps = n / 32;
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for step in 0..steps {
        let i = step * 32;
        // SAFETY: i + 32 <= n, the length of the shorter slice, so all 32 floats read from
        // each slice are inside it; unaligned loads have no alignment requirement.
        #[allow(unsafe_code)]
        let (x0, y0, x1, y1) = unsafe {
            (
                _mm512_loadu_ps(a.as_ptr().add(i)),
                _mm512_loadu_ps(b.as_ptr().add(i)),
                _mm512_loadu_ps(a.as_ptr().add(i + 16)),
                _mm512_loadu_ps(b.as_ptr().add(i + 16)),
            )
        };
        let (d0, d1) = (_mm512_sub_ps(x0, y0), _mm512_sub_ps(x1, y1));
        acc0 = _mm512_fmadd_ps(d0, d0, acc0);
        acc1 = _mm512_fmadd_ps(d1, d1, acc1);
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for i in steps * 32..n {
        let d = a[i] - b[i];
        sum += d * d;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn l2_avx2_checked(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only handed out by `l2_for_this_cpu` after it found AVX2 and FMA on this
    // CPU, the one requirement of calling a function compiled for them.
    #[allow(unsafe_code)]
    unsafe {
        l2_avx2(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn l2_avx2(a: &[f32], b: &[f32]) -> f32 {
    l2_portable(a, b)
}

/// Sixteen independent partial sums: the shape LLVM vectorises (an f32 sum in one
/// accumulator is not, as addition order would change).
#[inline(always)]
fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = a.len() / 16;
    for c in 0..chunks {
        let (x, y) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for i in 0..16 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 16..a.len().min(b.len()) {
        let d = a[i] - b[i];
        sum += d * d;
    }
    sum
}

/// Squared Euclidean distance from an f32 query to an int8 vector with one scale.
fn l2_i8_for_this_cpu() -> fn(&[f32], &[i8], f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return l2_i8_avx512_checked;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return l2_i8_avx2_checked;
        }
    }
    l2_i8_portable
}

#[cfg(target_arch = "x86_64")]
fn l2_i8_avx512_checked(q: &[f32], x: &[i8], scale: f32) -> f32 {
    // SAFETY: only handed out by `l2_i8_for_this_cpu` after it found AVX-512F.
    #[allow(unsafe_code)]
    unsafe {
        l2_i8_avx512(q, x, scale)
    }
}

/// [`l2_avx512`] against int8 values: 32 a step, widened to i32 then f32 and scaled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn l2_i8_avx512(q: &[f32], x: &[i8], scale: f32) -> f32 {
    use std::arch::x86_64::{
        __m128i, _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_cvtepi8_epi32, _mm512_fmadd_ps,
        _mm512_fnmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm_loadu_si128,
    };
    let n = q.len().min(x.len());
    let steps = n / 32;
    let s = _mm512_set1_ps(scale);
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for step in 0..steps {
        let i = step * 32;
        // SAFETY: i + 32 <= n, the length of the shorter slice: the 32 floats and the 32
        // bytes read are inside their slices; unaligned loads have no alignment requirement.
        #[allow(unsafe_code)]
        let (q0, q1, x0, x1) = unsafe {
            (
                _mm512_loadu_ps(q.as_ptr().add(i)),
                _mm512_loadu_ps(q.as_ptr().add(i + 16)),
                _mm_loadu_si128(x.as_ptr().add(i).cast::<__m128i>()),
                _mm_loadu_si128(x.as_ptr().add(i + 16).cast::<__m128i>()),
            )
        };
        let x0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x0));
        let x1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x1));
        // q − scale·x
        let (d0, d1) = (_mm512_fnmadd_ps(s, x0, q0), _mm512_fnmadd_ps(s, x1, q1));
        acc0 = _mm512_fmadd_ps(d0, d0, acc0);
        acc1 = _mm512_fmadd_ps(d1, d1, acc1);
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for i in steps * 32..n {
        let d = q[i] - scale * f32::from(x[i]);
        sum += d * d;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn l2_i8_avx2_checked(q: &[f32], x: &[i8], scale: f32) -> f32 {
    // SAFETY: only handed out by `l2_i8_for_this_cpu` after it found AVX2 and FMA.
    #[allow(unsafe_code)]
    unsafe {
        l2_i8_avx2(q, x, scale)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn l2_i8_avx2(q: &[f32], x: &[i8], scale: f32) -> f32 {
    l2_i8_portable(q, x, scale)
}

#[inline(always)]
fn l2_i8_portable(q: &[f32], x: &[i8], scale: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = q.len() / 16;
    for c in 0..chunks {
        let (a, b) = (&q[c * 16..c * 16 + 16], &x[c * 16..c * 16 + 16]);
        for i in 0..16 {
            let d = a[i] - scale * f32::from(b[i]);
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 16..q.len().min(x.len()) {
        let d = q[i] - scale * f32::from(x[i]);
        sum += d * d;
    }
    sum
}

/// Asks the CPU to start loading the cache line at `ptr`.
#[inline(always)]
fn prefetch_at(ptr: *const i8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults and reads nothing into the
        // program, whatever the address; SSE, which it needs, is part of x86_64.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(ptr);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// How the index keeps its vectors.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    /// Symmetric int8 with one max-abs scale per vector: a quarter of the bytes.
    I8 {
        data: Vec<i8>,
        scales: Vec<f32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Near {
    d: f32,
    id: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.d.total_cmp(&other.d).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

thread_local! {
    /// Per-thread visited marks (node -> generation of the search that saw it), the
    /// generation, and a buffer for the unvisited neighbours of the node being expanded.
    static VISITED: RefCell<(Vec<u32>, u32, Vec<u32>)> =
        const { RefCell::new((Vec::new(), 0, Vec::new())) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            seed: 1,
        }
    }
}

/// Most links a node has on one layer (layer 0 holds 2M).
const MAX_LINKS: usize = 256;

#[derive(Debug, Clone)]
pub struct Hnsw {
    dim: usize,
    params: HnswParams,
    m0: usize,
    ml: f64,
    store: Store,
    /// Layer 0: per node, a count then `m0` slots.
    layer0: Vec<u32>,
    /// Layers above 0: per node, for each of its levels, a count then `m` slots.
    upper: Vec<Vec<u32>>,
    levels: Vec<u8>,
    entry: Option<u32>,
    max_level: usize,
    rng: StdRng,
    /// The distances for this CPU, chosen once.
    dist: fn(&[f32], &[f32]) -> f32,
    dist_i8: fn(&[f32], &[i8], f32) -> f32,
}

impl Hnsw {
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Self::with_store(dim, params, Store::F32(Vec::new()))
    }

    /// An index keeping its vectors as int8 (searches take f32 queries).
    pub fn new_int8(dim: usize, params: HnswParams) -> Self {
        Self::with_store(
            dim,
            params,
            Store::I8 {
                data: Vec::new(),
                scales: Vec::new(),
            },
        )
    }

    fn with_store(dim: usize, params: HnswParams, store: Store) -> Self {
        let m = params.m.clamp(2, MAX_LINKS / 2);
        Self {
            dim,
            params: HnswParams { m, ..params },
            m0: 2 * m,
            ml: 1.0 / (m as f64).ln(),
            store,
            layer0: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
            entry: None,
            max_level: 0,
            rng: StdRng::seed_from_u64(params.seed),
            dist: l2_for_this_cpu(),
            dist_i8: l2_i8_for_this_cpu(),
        }
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    /// Squared distance from `q` to node `id`.
    #[inline]
    fn d(&self, q: &[f32], id: u32) -> f32 {
        let start = id as usize * self.dim;
        match &self.store {
            Store::F32(v) => (self.dist)(q, &v[start..start + self.dim]),
            Store::I8 { data, scales } => {
                (self.dist_i8)(q, &data[start..start + self.dim], scales[id as usize])
            }
        }
    }

    /// Squared distance from `q` to node `id` as the index holds it (int8 or f32).
    pub fn distance(&self, q: &[f32], id: u32) -> f32 {
        self.d(q, id)
    }

    /// Asks the CPU to start loading node `id`'s vector into the cache.
    #[inline]
    fn prefetch(&self, id: u32) {
        let start = id as usize * self.dim;
        match &self.store {
            Store::F32(v) => prefetch_at(v.as_ptr().wrapping_add(start).cast()),
            Store::I8 { data, .. } => prefetch_at(data.as_ptr().wrapping_add(start)),
        }
    }

    /// Asks the CPU to start loading node `id`'s links on `level` into the cache (layer 0
    /// only: the upper layers are a few thousand nodes and stay cached).
    #[inline]
    fn prefetch_links(&self, id: u32, level: usize) {
        if level == 0 {
            let start = id as usize * (self.m0 + 1);
            prefetch_at(self.layer0.as_ptr().wrapping_add(start).cast());
        }
    }

    /// Node `id`'s vector as f32 (decoded from int8 when stored so).
    fn vector(&self, id: u32) -> std::borrow::Cow<'_, [f32]> {
        let start = id as usize * self.dim;
        match &self.store {
            Store::F32(v) => std::borrow::Cow::Borrowed(&v[start..start + self.dim]),
            Store::I8 { data, scales } => {
                let scale = scales[id as usize];
                std::borrow::Cow::Owned(
                    data[start..start + self.dim]
                        .iter()
                        .map(|x| scale * f32::from(*x))
                        .collect(),
                )
            }
        }
    }

    fn neighbours(&self, id: u32, level: usize) -> &[u32] {
        if level == 0 {
            let start = id as usize * (self.m0 + 1);
            let n = self.layer0[start] as usize;
            &self.layer0[start + 1..start + 1 + n]
        } else {
            let list = &self.upper[id as usize];
            let start = (level - 1) * (self.params.m + 1);
            let n = list[start] as usize;
            &list[start + 1..start + 1 + n]
        }
    }

    fn set_neighbours(&mut self, id: u32, level: usize, ids: &[u32]) {
        let (slots, cap) = if level == 0 {
            let start = id as usize * (self.m0 + 1);
            (&mut self.layer0[start..start + self.m0 + 1], self.m0)
        } else {
            let m = self.params.m;
            let start = (level - 1) * (m + 1);
            (&mut self.upper[id as usize][start..start + m + 1], m)
        };
        let n = ids.len().min(cap);
        slots[0] = n as u32;
        slots[1..1 + n].copy_from_slice(&ids[..n]);
    }

    /// The `ef` nearest found from `entry` on `level`, nearest first.
    fn search_layer(&self, q: &[f32], entry: &[Near], ef: usize, level: usize) -> Vec<Near> {
        VISITED.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (marks, generation, fresh) = &mut *cell;
            if marks.len() < self.len() {
                marks.resize(self.len(), 0);
            }
            *generation = generation.wrapping_add(1);
            if *generation == 0 {
                marks.iter_mut().for_each(|m| *m = 0);
                *generation = 1;
            }
            let generation = *generation;
            let mut candidates: BinaryHeap<std::cmp::Reverse<Near>> =
                BinaryHeap::with_capacity(ef * 2);
            let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
            for e in entry {
                marks[e.id as usize] = generation;
                candidates.push(std::cmp::Reverse(*e));
                found.push(*e);
            }
            while let Some(std::cmp::Reverse(current)) = candidates.pop() {
                let worst = found.peek().map_or(f32::INFINITY, |f| f.d);
                if current.d > worst && found.len() >= ef {
                    break;
                }
                // Unvisited neighbours first, their vectors fetched into the cache ahead of
                // the distances (as hnswlib does), then the distances.
                fresh.clear();
                for &n in self.neighbours(current.id, level) {
                    if marks[n as usize] != generation {
                        marks[n as usize] = generation;
                        self.prefetch(n);
                        fresh.push(n);
                    }
                }
                for &n in fresh.iter() {
                    let d = self.d(q, n);
                    let worst = found.peek().map_or(f32::INFINITY, |f| f.d);
                    if found.len() < ef || d < worst {
                        candidates.push(std::cmp::Reverse(Near { d, id: n }));
                        found.push(Near { d, id: n });
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
                // The next node to expand: its links start loading while the heap work
                // of this one finishes (hnswlib does the same).
                if let Some(std::cmp::Reverse(next)) = candidates.peek() {
                    self.prefetch_links(next.id, level);
                }
            }
            found.into_sorted_vec()
        })
    }

    /// The paper's heuristic: a candidate is kept when it is nearer to the new element
    /// than to every neighbour kept so far (spreads links across directions).
    fn select(&self, candidates: &[Near], m: usize) -> Vec<u32> {
        let mut kept: Vec<Near> = Vec::with_capacity(m);
        for c in candidates {
            if kept.len() >= m {
                break;
            }
            let v = self.vector(c.id);
            if kept.iter().all(|k| self.d(&v, k.id) > c.d) {
                kept.push(*c);
            }
        }
        kept.into_iter().map(|k| k.id).collect()
    }

    /// From the entry point down to `to_level`, moving to whichever neighbour is nearer
    /// until none is (the upper layers need no candidate lists).
    fn greedy_descent(&self, q: &[f32], from_level: usize, to_level: usize) -> Vec<Near> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        let mut best = Near {
            d: self.d(q, entry),
            id: entry,
        };
        let mut level = from_level;
        while level > to_level {
            loop {
                let mut moved = false;
                for &n in self.neighbours(best.id, level) {
                    let d = self.d(q, n);
                    if d < best.d {
                        best = Near { d, id: n };
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
            level -= 1;
        }
        vec![best]
    }

    /// Adds a vector; returns its id (insertion order, from 0).
    pub fn insert(&mut self, v: &[f32]) -> u32 {
        assert_eq!(v.len(), self.dim, "vector dimension");
        let id = self.len() as u32;
        let level = (-self.rng.gen_range(f64::MIN_POSITIVE..1.0).ln() * self.ml).floor() as usize;
        let level = level.min(16);
        match &mut self.store {
            Store::F32(vectors) => vectors.extend_from_slice(v),
            Store::I8 { data, scales } => {
                let (scale, values) = crate::vector::quantise(v);
                data.extend(values);
                scales.push(scale);
            }
        }
        self.levels.push(level as u8);
        self.layer0.extend(std::iter::repeat_n(0, self.m0 + 1));
        self.upper.push(vec![0; level * (self.params.m + 1)]);
        let Some(_) = self.entry else {
            self.entry = Some(id);
            self.max_level = level;
            return id;
        };
        let top = self.max_level;
        let mut entry = self.greedy_descent(v, top, level.min(top));
        for l in (0..=level.min(top)).rev() {
            let found = self.search_layer(v, &entry, self.params.ef_construction, l);
            let cap = if l == 0 { self.m0 } else { self.params.m };
            let chosen = self.select(&found, self.params.m);
            self.set_neighbours(id, l, &chosen);
            for &n in &chosen {
                let mut links: Vec<u32> = self.neighbours(n, l).to_vec();
                links.push(id);
                if links.len() > cap {
                    let nv = self.vector(n).into_owned();
                    let mut near: Vec<Near> = links
                        .iter()
                        .map(|&o| Near {
                            d: self.d(&nv, o),
                            id: o,
                        })
                        .collect();
                    near.sort();
                    links = self.select(&near, cap);
                }
                self.set_neighbours(n, l, &links);
            }
            entry = found;
        }
        if level > top {
            self.entry = Some(id);
            self.max_level = level;
        }
        id
    }

    /// The `k` nearest ids with their squared distances, nearest first.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(u32, f32)> {
        self.search_ef(q, k, self.params.ef_search)
    }

    pub fn search_ef(&self, q: &[f32], k: usize, ef: usize) -> Vec<(u32, f32)> {
        if self.is_empty() || q.len() != self.dim {
            return Vec::new();
        }
        let entry = self.greedy_descent(q, self.max_level, 0);
        let mut found = self.search_layer(q, &entry, ef.max(k), 0);
        found.truncate(k);
        found.into_iter().map(|n| (n.id, n.d)).collect()
    }

    /// The `k` nearest by exact distance among the index's `candidates` nearest (at ef
    /// `ef`): for an int8 index, `exact(id)` gives the squared distance from the query to
    /// the f32 vector kept elsewhere (on disk), which settles the near-ties the rounding
    /// blurs, at the cost of `candidates` reads.
    pub fn search_rerank(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        candidates: usize,
        mut exact: impl FnMut(u32) -> f32,
    ) -> Vec<(u32, f32)> {
        let mut found: Vec<(u32, f32)> = self
            .search_ef(q, candidates.max(k), ef.max(candidates))
            .into_iter()
            .map(|(id, _)| (id, exact(id)))
            .collect();
        found.sort_by(|a, b| a.1.total_cmp(&b.1));
        found.truncate(k);
        found
    }

    /// Bytes of vectors and links held (for the memory comparison).
    pub fn bytes(&self) -> usize {
        let vectors = match &self.store {
            Store::F32(v) => v.len() * 4,
            Store::I8 { data, scales } => data.len() + scales.len() * 4,
        };
        vectors
            + self.layer0.len() * 4
            + self.upper.iter().map(|u| u.len() * 4).sum::<usize>()
            + self.levels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::{exact_nearest, normalise};

    fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 20]
                    .iter()
                    .map(|x| x + rng.gen_range(-0.5..0.5))
                    .collect();
                normalise(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn the_distance_is_squared_euclidean_on_every_path() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| (36 - i) as f32 * 0.07).collect();
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((l2(&a, &b) - exact).abs() < 1e-3 * exact);
        assert!((l2_portable(&a, &b) - exact).abs() < 1e-3 * exact);
        // Every length around the vector paths' steps (16, 32) and the model's 384.
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 384, 385] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            let tolerance = 1e-4 * exact.max(1.0);
            assert!((l2(&a, &b) - exact).abs() <= tolerance, "{n}");
            assert!((l2_portable(&a, &b) - exact).abs() <= tolerance, "{n}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    assert!(
                        (l2_avx512_checked(&a, &b) - exact).abs() <= tolerance,
                        "{n}"
                    );
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    assert!((l2_avx2_checked(&a, &b) - exact).abs() <= tolerance, "{n}");
                }
            }
            // The int8 paths, against the same sum over the decoded values.
            let scale = 0.013;
            let x: Vec<i8> = (0..n)
                .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                .collect();
            let exact: f32 = a
                .iter()
                .zip(&x)
                .map(|(q, v)| (q - scale * f32::from(*v)).powi(2))
                .sum();
            let tolerance = 1e-4 * exact.max(1.0);
            assert!(
                (l2_i8_portable(&a, &x, scale) - exact).abs() <= tolerance,
                "{n}"
            );
            assert!(
                (l2_i8_for_this_cpu()(&a, &x, scale) - exact).abs() <= tolerance,
                "{n}"
            );
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    let got = l2_i8_avx512_checked(&a, &x, scale);
                    assert!((got - exact).abs() <= tolerance, "{n}");
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let got = l2_i8_avx2_checked(&a, &x, scale);
                    assert!((got - exact).abs() <= tolerance, "{n}");
                }
            }
        }
    }

    #[test]
    fn recall_against_brute_force() {
        let dim = 48;
        let mut data = clustered(3100, dim, 5);
        // Queries from the same clusters, not in the index.
        let queries = data.split_off(3000);
        let mut index = Hnsw::new(dim, HnswParams::default());
        for v in &data {
            index.insert(v);
        }
        assert_eq!(index.len(), 3000);
        let mut hits = 0;
        for q in &queries {
            let truth: std::collections::HashSet<u32> = exact_nearest(&data, q, 10)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let found = index.search(q, 10);
            assert_eq!(found.len(), 10);
            assert!(found.windows(2).all(|w| w[0].1 <= w[1].1));
            hits += found.iter().filter(|(id, _)| truth.contains(id)).count();
        }
        let recall = hits as f64 / 1000.0;
        assert!(recall >= 0.97, "recall@10 {recall}");
    }

    #[test]
    fn an_int8_index_keeps_recall_in_less_memory_and_reranking_restores_f32_recall() {
        let dim = 48;
        let mut data = clustered(2100, dim, 8);
        let queries = data.split_off(2000);
        let mut full = Hnsw::new(dim, HnswParams::default());
        let mut small = Hnsw::new_int8(dim, HnswParams::default());
        for v in &data {
            full.insert(v);
            small.insert(v);
        }
        let mut hits = [0, 0, 0];
        for q in &queries {
            let truth: std::collections::HashSet<u32> = exact_nearest(&data, q, 10)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let exact = |id: u32| l2(q, &data[id as usize]);
            let reranked = small.search_rerank(q, 10, 64, 32, exact);
            // Re-ranked distances are the exact ones, nearest first.
            assert!(reranked.windows(2).all(|w| w[0].1 <= w[1].1));
            assert_eq!(reranked[0].1, exact(reranked[0].0));
            for (h, found) in
                hits.iter_mut()
                    .zip([full.search(q, 10), small.search(q, 10), reranked])
            {
                *h += found.iter().filter(|(id, _)| truth.contains(id)).count();
            }
        }
        let recall = hits.map(|h| h as f64 / 1000.0);
        assert!(
            recall[1] >= 0.95 && recall[1] >= recall[0] - 0.02,
            "{recall:?}"
        );
        assert!(
            recall[2] >= recall[1] && recall[2] >= recall[0] - 0.01,
            "re-ranked: {recall:?}"
        );
        assert!(
            small.bytes() < full.bytes() * 7 / 10,
            "{} vs {}",
            small.bytes(),
            full.bytes()
        );
    }

    #[test]
    fn small_and_empty_indexes_answer() {
        let mut index = Hnsw::new(3, HnswParams::default());
        assert!(index.search(&[1.0, 0.0, 0.0], 5).is_empty());
        index.insert(&[1.0, 0.0, 0.0]);
        index.insert(&[0.0, 1.0, 0.0]);
        let found = index.search(&[0.9, 0.1, 0.0], 5);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(index.search(&[1.0, 0.0], 5).is_empty(), "wrong dimension");
    }
}
