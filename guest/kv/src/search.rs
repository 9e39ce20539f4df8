//! The read path: a search scans the tail and the nearest clusters exactly and reads the texts
//! of its hits; `get` finds a document's row through the id map. Reads start over on a fresh
//! head when a commit deletes a value they were about to read.

use std::collections::BinaryHeap;
use std::rc::Rc;

use serde_json::{Map, Value};
use tvs_guest_core::documents as document_rules;
use tvs_guest_core::filter::Filter;

use crate::encoding::Page;
use crate::{Document, Hit, KeyValue, KvCollection, KvError, Manifest, Metric, WRITE_ATTEMPTS, is_current, ivf, score};

/// A candidate hit while a search runs: ordered by distance, then id, the worst on top.
#[derive(Debug)]
struct Candidate {
    distance: f32,
    id: String,
    row: u32,
    metadata: String,
    vector: Vec<f32>,
    /// Known for tail rows; read from the text pages for clustered ones.
    text: Option<String>,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// The `k` best rows seen so far.
struct TopK {
    k: usize,
    heap: BinaryHeap<Candidate>,
}

impl TopK {
    /// Whether a row at `distance` (with id `id`) would be kept.
    pub(crate) fn admits(&self, distance: f32, id: &str) -> bool {
        self.heap.len() < self.k
            || self.heap.peek().is_some_and(|worst| {
                distance.total_cmp(&worst.distance).then_with(|| id.cmp(&worst.id)) == std::cmp::Ordering::Less
            })
    }
    pub(crate) fn push(&mut self, candidate: Candidate) {
        self.heap.push(candidate);
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }
}

impl<K: KeyValue> KvCollection<K> {
    /// Runs a read again on a fresh head while commits keep replacing what it reads.
    pub(crate) fn reading<R>(&mut self, mut read: impl FnMut(&mut Self) -> Result<R, KvError>) -> Result<R, KvError> {
        for _ in 0..WRITE_ATTEMPTS {
            match read(self) {
                Err(KvError::HeadMoved(_)) => self.reload()?,
                other => return other,
            }
        }
        Err(KvError::HeadMoved(self.tenant.clone()))
    }

    /// Documents by id, in the order asked; missing ids skipped. Vectors only when asked.
    pub fn get(&mut self, ids: &[String], with_vectors: bool) -> Result<Vec<Document>, KvError> {
        self.reading(|c| c.get_once(ids, with_vectors))
    }

    pub(crate) fn get_once(&mut self, ids: &[String], with_vectors: bool) -> Result<Vec<Document>, KvError> {
        let mut out = Vec::with_capacity(ids.len());
        let manifest = self.manifest()?;
        for id in ids {
            let Some(row) = self.live_row(id)? else { continue };
            let watermark = manifest.as_ref().map_or(0, |m| m.watermark);
            if row >= watermark {
                let tail = self
                    .head
                    .tail
                    .iter()
                    .find(|p| (p.first_row..p.first_row + p.rows).contains(&row))
                    .cloned()
                    .ok_or_else(|| self.corrupt(format!("row {row} is in no tail page")))?;
                let page = self.page(&tail.key)?;
                let i = page
                    .rows
                    .binary_search(&row)
                    .map_err(|_| self.corrupt(format!("row {row} is not in its tail page")))?;
                out.push(self.document(&page, i, &page.texts[i], with_vectors.then(|| page.vector(i).to_vec())));
                continue;
            }
            let manifest = manifest
                .as_ref()
                .ok_or_else(|| self.corrupt("clustered row without an index"))?;
            let (text_page, i) = self.text_of(manifest, row)?;
            let vector = if with_vectors {
                Some(self.clustered_vector(manifest, text_page.tags[i], row)?)
            } else {
                None
            };
            out.push(self.document(&text_page, i, &text_page.texts[i], vector));
        }
        Ok(out)
    }

    pub(crate) fn document(&self, page: &Page, i: usize, text: &str, vector: Option<Vec<f32>>) -> Document {
        Document {
            id: page.ids[i].clone(),
            text: text.to_owned(),
            metadata: serde_json::from_str(&page.metadata[i]).unwrap_or_default(),
            vector: vector.unwrap_or_default(),
        }
    }

    /// The text page holding clustered `row`, and the row's index in it.
    pub(crate) fn text_of(&mut self, manifest: &Manifest, row: u32) -> Result<(Rc<Page>, usize), KvError> {
        let at = manifest.texts.partition_point(|t| t.last_row < row);
        let entry = manifest
            .texts
            .get(at)
            .filter(|t| t.first_row <= row)
            .ok_or_else(|| self.corrupt(format!("row {row} is in no text page")))?;
        let page = self.page(&entry.key.clone())?;
        let i = page
            .rows
            .binary_search(&row)
            .map_err(|_| self.corrupt(format!("row {row} is not in its text page")))?;
        Ok((page, i))
    }

    /// The vector of clustered `row`, tagged with `cluster` when it was folded: there, or in a
    /// cluster split from it since.
    pub(crate) fn clustered_vector(
        &mut self,
        manifest: &Manifest,
        cluster: u32,
        row: u32,
    ) -> Result<Vec<f32>, KvError> {
        let mut look = vec![cluster];
        while let Some(c) = look.pop() {
            for part in manifest
                .clusters
                .get(c as usize)
                .map(|c| c.parts.clone())
                .unwrap_or_default()
            {
                let page = self.part(&part)?;
                if let Some(i) = page.rows.iter().position(|&r| r == row) {
                    return Ok(page.vector(i).to_vec());
                }
            }
            look.extend(
                manifest
                    .clusters
                    .iter()
                    .enumerate()
                    .filter(|(_, child)| child.split_from == Some(c))
                    .map(|(i, _)| i as u32),
            );
        }
        Err(self.corrupt(format!("row {row} is in no cluster")))
    }

    /// The `k` nearest documents to `vector` among those matching `filter`, nearest first (ties
    /// by id), with exact distances.
    pub fn search(&mut self, vector: &[f32], k: usize, filter: Option<&Filter>) -> Result<Vec<Hit>, KvError> {
        document_rules::check_vector(vector, self.config.dims, self.config.metric == Metric::Cos)
            .map_err(|reason| KvError::InvalidInput(format!("invalid query: query {reason}")))?;
        self.reading(|c| c.search_once(vector, k, filter))
    }

    pub(crate) fn search_once(
        &mut self,
        vector: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, KvError> {
        let metric = self.config.metric;
        let query_norm = ivf::norm(vector);
        let mut top = TopK {
            k: k.max(1),
            heap: BinaryHeap::new(),
        };
        let matches = |metadata: &str| -> bool {
            filter.is_none_or(|f| f.matches(&serde_json::from_str::<Map<String, Value>>(metadata).unwrap_or_default()))
        };
        for tail in self.head.tail.clone() {
            let page = self.page(&tail.key)?;
            for i in 0..page.len() {
                if self.head.tail_ids.get(&page.ids[i]) != Some(&Some(page.rows[i])) {
                    continue;
                }
                let distance = ivf::distance_with_norms(metric, vector, query_norm, page.vector(i), page.norms[i]);
                if top.admits(distance, &page.ids[i]) && matches(&page.metadata[i]) {
                    top.push(Candidate {
                        distance,
                        id: page.ids[i].clone(),
                        row: page.rows[i],
                        metadata: page.metadata[i].clone(),
                        vector: page.vector(i).to_vec(),
                        text: Some(page.texts[i].clone()),
                    });
                }
            }
        }
        let manifest = self.manifest()?;
        if let Some(manifest) = &manifest {
            let centroids = self.centroids(manifest)?;
            let dead = self.dead()?;
            let ranking = centroids.ranked(metric, vector);
            for (read, &cluster) in ranking.iter().enumerate() {
                // Past the calibrated breadth, only while a filter has matched fewer than k.
                if read >= manifest.nprobe as usize && top.heap.len() >= top.k {
                    break;
                }
                for part in manifest.clusters[cluster as usize].parts.clone() {
                    let page = self.part(&part)?;
                    for i in 0..page.len() {
                        let row = page.rows[i];
                        if dead.contains(row) {
                            continue;
                        }
                        let distance =
                            ivf::distance_with_norms(metric, vector, query_norm, page.vector(i), page.norms[i]);
                        if top.admits(distance, &page.ids[i])
                            && is_current(&self.head, &page.ids[i], row)
                            && matches(&page.metadata[i])
                        {
                            top.push(Candidate {
                                distance,
                                id: page.ids[i].clone(),
                                row,
                                metadata: page.metadata[i].clone(),
                                vector: page.vector(i).to_vec(),
                                text: None,
                            });
                        }
                    }
                }
            }
        }
        let mut hits = top.heap.into_sorted_vec();
        let mut out = Vec::with_capacity(hits.len());
        for c in hits.drain(..) {
            let text = match c.text {
                Some(text) => text,
                None => {
                    let manifest = manifest
                        .as_ref()
                        .ok_or_else(|| self.corrupt("clustered hit without an index"))?;
                    let (page, i) = self.text_of(manifest, c.row)?;
                    page.texts[i].clone()
                }
            };
            out.push(Hit {
                score: score(metric, c.distance),
                distance: c.distance,
                document: Document {
                    id: c.id,
                    text,
                    metadata: serde_json::from_str(&c.metadata).unwrap_or_default(),
                    vector: c.vector,
                },
            });
        }
        Ok(out)
    }
}
