//! Folding the tail into the clusters: the first fold builds the index (k-means over the
//! tail); later ones add each row to its nearest cluster as a new part, rewrite clusters with
//! too many parts or dead rows, split clusters grown too large, move texts to text pages and ids
//! to the id shards, and re-measure how many clusters a search must read. Everything is written
//! under new names and committed by one swap of the head; what the new head no longer names is
//! deleted afterwards, and what a crash left behind is collected by a later fold.

use std::collections::{BTreeMap, HashMap};

use crate::encoding::{self, Bitmap, Calibration, Neighbour, Page};
use crate::{
    CALIBRATION_K, Cluster, Head, KeyValue, KvCollection, KvError, Manifest, SEGMENT_MAX, TRUTH_KEEP, TextPage,
    Written, distance, is_current, ivf, key_of, seq_of, shard_of, to_json,
};

impl<K: KeyValue> KvCollection<K> {
    /// Folds the tail into the clusters now, and rewrites every cluster that holds dead rows
    /// (what a fold does to a cluster with too many parts). Nothing to do is not an error.
    pub fn compact(&mut self) -> Result<(), KvError> {
        self.fold(true)
    }

    /// Folds the tail into the clusters (building the index on the first fold) and commits by
    /// one swap of `head`; `everything` also rewrites clusters with dead rows. Losing the swap to
    /// another writer drops this fold (a later write folds).
    pub(crate) fn fold(&mut self, everything: bool) -> Result<(), KvError> {
        if self.head.tail.is_empty() && !everything {
            return Ok(());
        }
        let mut head = self.head.clone();
        let prefix = self.value_prefix(&head);
        let mut written = Written::default();
        let obsolete = match self.plan_fold(&mut head, &prefix, &mut written, everything) {
            Ok(Some(obsolete)) => obsolete,
            Ok(None) => {
                self.discard(written);
                return Ok(());
            }
            Err(KvError::HeadMoved(_)) => {
                self.discard(written);
                return self.reload();
            }
            Err(e) => {
                self.discard(written);
                return Err(e);
            }
        };
        head.seq += 1;
        let head_bytes = to_json(&head)?;
        if !self
            .kv
            .compare_and_swap(&key_of(&self.tenant, "head"), Some(&self.head_bytes), &head_bytes)?
        {
            self.discard(written);
            return self.reload();
        }
        self.head = head;
        self.head_bytes = head_bytes;
        for name in obsolete {
            self.cache.remove(&name);
            let _ = self.kv.delete(&name);
        }
        // What crashes left behind is looked for now and then (listing keys reads the store's
        // whole key space), and always by an explicit compaction.
        let folds = self.manifest()?.map_or(0, |m| m.folds);
        if everything || folds % 8 == 0 {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Deletes values under this tenant's `v/` that the head does not name and that no write
    /// in flight can still commit (written on top of an older head).
    pub(crate) fn collect_garbage(&mut self) -> Result<(), KvError> {
        let mut named: std::collections::HashSet<String> = self.head.tail.iter().map(|t| t.key.clone()).collect();
        named.extend(self.head.dead.clone());
        named.extend(self.head.manifest.clone());
        if let Some(m) = self.manifest()? {
            named.extend(m.centroids.iter().cloned());
            named.extend(m.calibration.clone());
            named.extend(m.shards.iter().cloned());
            named.extend(m.texts.iter().map(|t| t.key.clone()));
            named.extend(m.clusters.iter().flat_map(|c| c.parts.iter().cloned()));
        }
        let prefix = key_of(&self.tenant, "v/");
        for k in self.kv.keys()? {
            if k.starts_with(&prefix) && !named.contains(&k) && seq_of(&k).is_some_and(|s| s <= self.head.seq) {
                let _ = self.kv.delete(&k);
            }
        }
        Ok(())
    }

    /// Writes what a fold makes under `prefix` and sets `head` to name it; returns the values
    /// the new head no longer names, or `None` when there is nothing to fold.
    pub(crate) fn plan_fold(
        &mut self,
        head: &mut Head,
        prefix: &str,
        written: &mut Written,
        everything: bool,
    ) -> Result<Option<Vec<String>>, KvError> {
        let metric = self.config.metric;
        let dims = self.config.dims;
        let dead = self.dead()?;
        // The tail's live rows, in row order.
        let mut fresh = Page::new(dims);
        for tail in head.tail.clone() {
            let page = self.page(&tail.key)?;
            for i in 0..page.len() {
                if head.tail_ids.get(&page.ids[i]) == Some(&Some(page.rows[i])) {
                    fresh.push_from(&page, i, true);
                }
            }
        }
        let mut obsolete: Vec<String> = head.tail.iter().map(|t| t.key.clone()).collect();
        let old_manifest = self.manifest()?;
        if old_manifest.is_none() && fresh.is_empty() {
            if head.tail.is_empty() && head.tail_ids.is_empty() {
                return Ok(None);
            }
            // Everything written was deleted again: drop the tail.
            head.tail.clear();
            head.tail_ids.clear();
            return Ok(Some(obsolete));
        }
        let (mut manifest, mut centroids, mut calibration) = match old_manifest {
            Some(m) => {
                obsolete.push(head.manifest.clone().unwrap_or_default());
                let centroids = (*self.centroids(&m)?).clone();
                let calibration = match &m.calibration {
                    Some(name) => (*self.decoded(name, false, Calibration::decode)?).clone(),
                    None => Calibration::default(),
                };
                ((*m).clone(), centroids, calibration)
            }
            None => {
                let refs: Vec<&[f32]> = (0..fresh.len()).map(|i| fresh.vector(i)).collect();
                let k = fresh.len().div_ceil(self.tuning.cluster_rows).max(1);
                let centroids = ivf::kmeans(metric, dims, &refs, k, 12, head.seq);
                let manifest = Manifest {
                    watermark: 0,
                    centroids: Vec::new(),
                    clusters: vec![
                        Cluster {
                            parts: Vec::new(),
                            rows: 0,
                            split_from: None,
                        };
                        centroids.len()
                    ],
                    texts: Vec::new(),
                    shards: Vec::new(),
                    calibration: None,
                    nprobe: 1,
                    recall: 1.0,
                    calibrated_rows: 0,
                    folds: 0,
                };
                (manifest, centroids, Calibration::default())
            }
        };
        let centroids_before = centroids.clone();
        // Each fresh row goes to its nearest cluster.
        let mut joining: Vec<Vec<usize>> = vec![Vec::new(); centroids.len()];
        for i in 0..fresh.len() {
            joining[centroids.nearest(metric, fresh.vector(i))].push(i);
        }
        let mut cluster_of_row: HashMap<u32, u32> = HashMap::new();
        // Clusters to rewrite whole: too many parts, too many rows (split), or dead rows to drop.
        let mut by_size: Vec<usize> = (0..manifest.clusters.len())
            .filter(|&c| manifest.clusters[c].rows as usize + joining[c].len() > self.tuning.split_rows)
            .collect();
        by_size.sort_by_key(|&c| std::cmp::Reverse(manifest.clusters[c].rows as usize + joining[c].len()));
        by_size.truncate(self.tuning.max_splits);
        // Clusters a split adds come after these and take no fresh rows of their own.
        for (c, joining) in joining.iter().enumerate() {
            let cluster = manifest.clusters[c].clone();
            let split = by_size.contains(&c);
            let rewrite = split
                || cluster.parts.len() + usize::from(!joining.is_empty()) > self.tuning.max_parts
                || (everything && !cluster.parts.is_empty());
            if !rewrite {
                if joining.is_empty() {
                    continue;
                }
                let mut part = Page::new(dims);
                for &i in joining {
                    part.push_from(&fresh, i, false);
                    cluster_of_row.insert(fresh.rows[i], c as u32);
                }
                let names = self.put_parts(prefix, c, cluster.parts.len(), &part, written)?;
                manifest.clusters[c].parts.extend(names);
                manifest.clusters[c].rows += part.len() as u32;
                continue;
            }
            // The cluster whole: its live rows and the fresh ones.
            let mut members = Page::new(dims);
            for name in &cluster.parts {
                let page = self.part(name)?;
                for i in 0..page.len() {
                    if !dead.contains(page.rows[i]) && is_current(head, &page.ids[i], page.rows[i]) {
                        members.push_from(&page, i, false);
                    }
                }
            }
            for &i in joining {
                members.push_from(&fresh, i, false);
            }
            obsolete.extend(cluster.parts.iter().cloned());
            let groups: Vec<(usize, Page)> = if split && members.len() > self.tuning.split_rows {
                let refs: Vec<&[f32]> = (0..members.len()).map(|i| members.vector(i)).collect();
                let two = ivf::kmeans(metric, dims, &refs, 2, 8, head.seq ^ c as u64);
                let mut halves = [Page::new(dims), Page::new(dims)];
                for i in 0..members.len() {
                    halves[two.nearest(metric, members.vector(i))].push_from(&members, i, false);
                }
                if halves.iter().any(Page::is_empty) {
                    vec![(c, members)]
                } else {
                    centroids.set(c, two.get(0));
                    let new = centroids.push(two.get(1));
                    manifest.clusters.push(Cluster {
                        parts: Vec::new(),
                        rows: 0,
                        split_from: Some(c as u32),
                    });
                    let [a, b] = halves;
                    vec![(c, a), (new, b)]
                }
            } else {
                vec![(c, members)]
            };
            for (target, page) in groups {
                for &row in &page.rows {
                    cluster_of_row.insert(row, target as u32);
                }
                let names = self.put_parts(prefix, target, 0, &page, written)?;
                manifest.clusters[target].parts = names;
                manifest.clusters[target].rows = page.len() as u32;
            }
        }
        if centroids != centroids_before || manifest.centroids.is_empty() {
            obsolete.append(&mut manifest.centroids);
            // A value holds at most a million bytes: 250,000 floats (650 clusters of 384).
            for (n, chunk) in centroids.data.chunks(250_000).enumerate() {
                let name = format!("{prefix}/k{n}");
                self.put(name.clone(), &encoding::encode_floats(chunk), written)?;
                manifest.centroids.push(name);
            }
        }
        // Texts of the fresh rows, tagged with their clusters.
        let mut text = Page::new(0);
        let mut text_bytes = 0usize;
        let mut text_pages = 0usize;
        for i in 0..fresh.len() {
            let size = Page::row_bytes(0, &fresh.ids[i], &fresh.metadata[i], &fresh.texts[i]);
            if !text.is_empty() && text_bytes + size + 64 > self.tuning.text_page_bytes.min(SEGMENT_MAX) {
                self.put_text_page(prefix, &mut text_pages, &mut text, &mut manifest, written)?;
                text_bytes = 0;
            }
            text.push_from(&fresh, i, true);
            *text.tags.last_mut().expect("pushed") = cluster_of_row.get(&fresh.rows[i]).copied().unwrap_or(0);
            text_bytes += size;
        }
        if !text.is_empty() {
            self.put_text_page(prefix, &mut text_pages, &mut text, &mut manifest, written)?;
        }
        // Ids: the tail's changes merged into the shards (doubled when they grow full).
        let live_ids = head.count as usize;
        let mut shards = manifest.shards.len().max(1);
        while live_ids > shards * self.tuning.shard_ids {
            shards *= 2;
        }
        let mut entries: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); shards];
        let reshard = shards != manifest.shards.len();
        let mut touched = vec![reshard; shards];
        for id in head.tail_ids.keys() {
            touched[shard_of(id, shards)] = true;
        }
        for (s, name) in manifest.shards.clone().iter().enumerate() {
            if reshard || touched[s] {
                for (id, row) in self.shard(name)?.iter() {
                    entries[shard_of(id, shards)].insert(id.clone(), *row);
                }
            }
        }
        for (id, row) in &head.tail_ids {
            let shard = &mut entries[shard_of(id, shards)];
            match row {
                Some(row) => shard.insert(id.clone(), *row),
                None => shard.remove(id),
            };
        }
        let mut new_shards = Vec::with_capacity(shards);
        for s in 0..shards {
            if !touched[s] {
                new_shards.push(manifest.shards[s].clone());
                continue;
            }
            let list: Vec<(String, u32)> = std::mem::take(&mut entries[s]).into_iter().collect();
            let name = format!("{prefix}/i{s}");
            self.put(name.clone(), &encoding::encode_ids(&list), written)?;
            new_shards.push(name);
        }
        for (s, name) in manifest.shards.iter().enumerate() {
            if reshard || touched[s] {
                obsolete.push(name.clone());
            }
        }
        manifest.shards = new_shards;
        // Calibration: drawn afresh as the clustered rows double, else kept up to date.
        let clustered_rows = manifest.clusters.iter().map(|c| u64::from(c.rows)).sum::<u64>();
        self.update_calibration(&mut calibration, &fresh, &cluster_of_row, &dead);
        if manifest.calibrated_rows == 0
            || clustered_rows >= 2 * manifest.calibrated_rows
            || calibration.queries.len() < self.tuning.calibration_queries / 2
        {
            calibration = self.draw_calibration(&manifest, &dead, head)?;
            manifest.calibrated_rows = clustered_rows.max(1);
        }
        let rankings: Vec<Vec<u32>> = calibration
            .queries
            .iter()
            .map(|(_, q, _)| centroids.ranked(metric, q))
            .collect();
        let truths: Vec<Vec<u32>> = calibration
            .queries
            .iter()
            .map(|(_, _, truth)| truth.iter().take(CALIBRATION_K).map(|n| n.cluster).collect())
            .collect();
        let recall = ivf::recall_by_nprobe(&rankings, &truths, centroids.len());
        // Without held-out queries (a handful of rows) every cluster is read.
        let (nprobe, reached) = if calibration.queries.is_empty() {
            (centroids.len(), 1.0)
        } else {
            ivf::choose_nprobe(&recall, self.tuning.recall_target)
        };
        manifest.nprobe = nprobe as u32;
        manifest.recall = reached;
        if let Some(old) = manifest.calibration.take() {
            obsolete.push(old);
        }
        if !calibration.queries.is_empty() {
            let name = format!("{prefix}/q");
            self.put(name.clone(), &calibration.encode(), written)?;
            manifest.calibration = Some(name);
        }
        manifest.watermark = head.next_row;
        manifest.folds += 1;
        let name = format!("{prefix}/m");
        self.put(name.clone(), &to_json(&manifest)?, written)?;
        head.manifest = Some(name);
        head.tail.clear();
        head.tail_ids.clear();
        obsolete.retain(|n| !n.is_empty());
        Ok(Some(obsolete))
    }

    /// Writes `page` as parts of cluster `c` (numbered from `first`), each under the value limit.
    pub(crate) fn put_parts(
        &mut self,
        prefix: &str,
        c: usize,
        first: usize,
        page: &Page,
        written: &mut Written,
    ) -> Result<Vec<String>, KvError> {
        let mut names = Vec::new();
        let mut part = Page::new(page.dims);
        let mut bytes = 0usize;
        for i in 0..page.len() {
            let size = Page::row_bytes(page.dims, &page.ids[i], &page.metadata[i], "");
            if !part.is_empty() && bytes + size + 64 > SEGMENT_MAX {
                let name = format!("{prefix}/c{c}-{}", first + names.len());
                self.put(name.clone(), &part.encode(), written)?;
                names.push(name);
                part = Page::new(page.dims);
                bytes = 0;
            }
            part.push_from(page, i, false);
            bytes += size;
        }
        if !part.is_empty() {
            let name = format!("{prefix}/c{c}-{}", first + names.len());
            self.put(name.clone(), &part.encode(), written)?;
            names.push(name);
        }
        Ok(names)
    }

    pub(crate) fn put_text_page(
        &mut self,
        prefix: &str,
        pages: &mut usize,
        text: &mut Page,
        manifest: &mut Manifest,
        written: &mut Written,
    ) -> Result<(), KvError> {
        let name = format!("{prefix}/x{pages}");
        *pages += 1;
        self.put(name.clone(), &text.encode(), written)?;
        manifest.texts.push(TextPage {
            key: name,
            first_row: text.rows[0],
            last_row: *text.rows.last().expect("not empty"),
        });
        *text = Page::new(0);
        Ok(())
    }

    /// Held-out queries drawn from the live rows (the fresh ones and every cluster's), with
    /// their true neighbours among all live rows but themselves.
    pub(crate) fn draw_calibration(
        &mut self,
        manifest: &Manifest,
        dead: &Bitmap,
        head: &Head,
    ) -> Result<Calibration, KvError> {
        let metric = self.config.metric;
        let dims = self.config.dims;
        let mut rng = tvs_guest_core::rng::Rng::new(head.seq ^ 0x7476_7363);
        // Every live row streams past twice, a part at a time: queries are sampled by
        // reservoir, then their truth is found among all the others.
        let wanted = self.tuning.calibration_queries;
        let mut sample: Vec<(u32, Vec<f32>)> = Vec::new();
        let mut seen = 0usize;
        let mut visit = |row: u32, v: &[f32]| {
            seen += 1;
            if sample.len() < wanted {
                sample.push((row, v.to_vec()));
            } else {
                let j = rng.below(seen as u64) as usize;
                if j < wanted {
                    sample[j] = (row, v.to_vec());
                }
            }
        };
        let clusters: Vec<Vec<String>> = manifest.clusters.iter().map(|c| c.parts.clone()).collect();
        for parts in &clusters {
            for name in parts {
                let page = self.part(name)?;
                for i in 0..page.len() {
                    if !dead.contains(page.rows[i]) && is_current(head, &page.ids[i], page.rows[i]) {
                        visit(page.rows[i], page.vector(i));
                    }
                }
            }
        }
        // Too few rows to hold any out meaningfully: no calibration, every cluster is read.
        if sample.len() < 2 {
            return Ok(Calibration {
                dims,
                queries: Vec::new(),
            });
        }
        let mut truths: Vec<Vec<Neighbour>> = vec![Vec::new(); sample.len()];
        for (c, parts) in clusters.iter().enumerate() {
            for name in parts {
                let page = self.part(name)?;
                for i in 0..page.len() {
                    let row = page.rows[i];
                    if dead.contains(row) || !is_current(head, &page.ids[i], row) {
                        continue;
                    }
                    for (q, (own, vector)) in sample.iter().enumerate() {
                        if *own == row {
                            continue;
                        }
                        let d = distance(metric, vector, page.vector(i));
                        keep_nearest(
                            &mut truths[q],
                            Neighbour {
                                row,
                                cluster: c as u32,
                                distance: d,
                            },
                        );
                    }
                }
            }
        }
        Ok(Calibration {
            dims,
            queries: sample
                .into_iter()
                .zip(truths)
                .map(|((row, v), t)| (row, v, t))
                .collect(),
        })
    }

    /// Brings the queries' truth up to date: the fresh rows compete, dead rows leave (deleted
    /// and replaced clustered rows are all in `dead`), and rows of rewritten clusters carry
    /// their cluster now. A query left with fewer than ten neighbours is dropped; when half
    /// are, new ones are drawn.
    pub(crate) fn update_calibration(
        &self,
        calibration: &mut Calibration,
        fresh: &Page,
        cluster_of_row: &HashMap<u32, u32>,
        dead: &Bitmap,
    ) {
        let metric = self.config.metric;
        for (own, vector, truth) in &mut calibration.queries {
            truth.retain(|n| !dead.contains(n.row));
            for n in truth.iter_mut() {
                if let Some(&c) = cluster_of_row.get(&n.row) {
                    n.cluster = c;
                }
            }
            for i in 0..fresh.len() {
                if fresh.rows[i] == *own {
                    continue;
                }
                let cluster = cluster_of_row.get(&fresh.rows[i]).copied().unwrap_or(0);
                keep_nearest(
                    truth,
                    Neighbour {
                        row: fresh.rows[i],
                        cluster,
                        distance: distance(metric, vector, fresh.vector(i)),
                    },
                );
            }
        }
        calibration.queries.retain(|(_, _, truth)| truth.len() >= CALIBRATION_K);
    }
}

/// Keeps the [`TRUTH_KEEP`] nearest, sorted, in `truth`.
fn keep_nearest(truth: &mut Vec<Neighbour>, n: Neighbour) {
    if truth.len() >= TRUTH_KEEP && truth.last().is_some_and(|last| last.distance <= n.distance) {
        return;
    }
    let at = truth.partition_point(|t| t.distance <= n.distance);
    truth.insert(at, n);
    truth.truncate(TRUTH_KEEP);
}
