//! Byte layouts of the values a clustered tenant is made of. Each value starts with a 4-byte
//! magic and ends with a checksum of everything before it ([`checksum`]), so a damaged or
//! foreign value is refused with a reason instead of read as data. Numbers are little-endian.
//!
//! A [`Page`] holds rows column by column: row numbers, tags, vector norms, vectors (`dims`
//! floats each; none when `dims` is 0), then each row's id, metadata (JSON text) and text. Write
//! pages, cluster parts and text pages are all pages; what each leaves empty differs (a text
//! page has no vectors and tags each row with its cluster).

/// A byte writer for the layouts below.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new(magic: &[u8; 4]) -> Self {
        Writer(magic.to_vec())
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32s(&mut self, values: &[f32]) {
        self.0.reserve(values.len() * 4);
        for v in values {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn finish(mut self) -> Vec<u8> {
        let sum = checksum(&self.0);
        self.0.extend_from_slice(&sum.to_le_bytes());
        self.0
    }
}

/// A byte reader: every read checks its bounds, so truncated input is an error, not a panic.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Checks the magic and the checksum of `value`.
    pub fn open(value: &'a [u8], magic: &[u8; 4]) -> Result<Self, String> {
        if value.len() < 8 || &value[..4] != magic {
            return Err(format!("not a {} value", String::from_utf8_lossy(magic)));
        }
        let (body, sum) = value.split_at(value.len() - 4);
        if checksum(body).to_le_bytes() != sum {
            return Err(format!("{} value fails its checksum", String::from_utf8_lossy(magic)));
        }
        Ok(Reader { bytes: body, at: 4 })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err("value ends early".into());
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let b = self.take(n.checked_mul(4).ok_or("value too large")?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }
    pub fn done(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err("value has bytes after its end".into())
        }
    }
}

/// A Fletcher-style checksum over 64-bit words in four independent lanes: it catches damaged,
/// truncated and shifted values as a CRC would in practice, at memory speed inside a Wasm
/// component (CRC-32 in software took longer than reading the value from the store).
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut sum = [0u64; 4];
    let mut sum_of_sums = [0u64; 4];
    let chunks = bytes.chunks_exact(32);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..4 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&chunk[lane * 8..lane * 8 + 8]);
            sum[lane] = sum[lane].wrapping_add(u64::from_le_bytes(word));
            sum_of_sums[lane] = sum_of_sums[lane].wrapping_add(sum[lane]);
        }
    }
    let mut h: u64 = bytes.len() as u64;
    for lane in 0..4 {
        h = (h ^ sum[lane]).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        h = (h ^ sum_of_sums[lane])
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
            .rotate_left(31);
    }
    for (i, &b) in tail.iter().enumerate() {
        h = (h ^ (u64::from(b) << (8 * (i % 8)))).wrapping_mul(0x94D0_49BB_1331_11EB);
    }
    (h ^ (h >> 32)) as u32
}

const PAGE_MAGIC: &[u8; 4] = b"TVP1";

/// Rows of documents, column by column (see the module's comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub dims: usize,
    pub rows: Vec<u32>,
    /// A number per row whose meaning is the page's role's: in text pages, the row's cluster.
    pub tags: Vec<u32>,
    pub norms: Vec<f32>,
    pub vectors: Vec<f32>,
    pub ids: Vec<String>,
    pub metadata: Vec<String>,
    pub texts: Vec<String>,
}

impl Page {
    pub fn new(dims: usize) -> Self {
        Page {
            dims,
            ..Page::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dims..(i + 1) * self.dims]
    }

    /// Bytes row `i` adds to an encoded page.
    pub fn row_bytes(dims: usize, id: &str, metadata: &str, text: &str) -> usize {
        12 + dims * 4 + 12 + id.len() + metadata.len() + text.len()
    }

    /// Appends a row (`vector` is ignored when the page has no dimensions).
    pub fn push(&mut self, row: u32, vector: &[f32], norm: f32, id: &str, metadata: &str, text: &str) {
        self.rows.push(row);
        self.tags.push(0);
        self.norms.push(norm);
        if self.dims > 0 {
            self.vectors.extend_from_slice(vector);
        }
        self.ids.push(id.to_owned());
        self.metadata.push(metadata.to_owned());
        self.texts.push(text.to_owned());
    }

    /// Appends row `i` of `other` (same dimensions, or none here).
    pub fn push_from(&mut self, other: &Page, i: usize, with_text: bool) {
        let vector = if other.dims > 0 { other.vector(i) } else { &[] };
        let text = if with_text { other.texts[i].as_str() } else { "" };
        self.push(
            other.rows[i],
            vector,
            other.norms[i],
            &other.ids[i],
            &other.metadata[i],
            text,
        );
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(PAGE_MAGIC);
        w.u32(self.dims as u32);
        w.u32(self.rows.len() as u32);
        for r in self.rows.iter().chain(&self.tags) {
            w.u32(*r);
        }
        w.f32s(&self.norms);
        w.f32s(&self.vectors);
        for i in 0..self.rows.len() {
            w.bytes(self.ids[i].as_bytes());
            w.bytes(self.metadata[i].as_bytes());
            w.bytes(self.texts[i].as_bytes());
        }
        w.finish()
    }

    pub fn decode(value: &[u8]) -> Result<Page, String> {
        let mut r = Reader::open(value, PAGE_MAGIC)?;
        let dims = r.u32()? as usize;
        let n = r.u32()? as usize;
        // Each row takes at least 16 bytes: a count past that is damage, not an allocation.
        if n > value.len() / 16 + 1 {
            return Err("page claims more rows than it has bytes".into());
        }
        let rows = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        let tags = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        let norms = r.f32s(n)?;
        let vectors = r.f32s(n.checked_mul(dims).ok_or("page too large")?)?;
        let mut page = Page {
            dims,
            rows,
            tags,
            norms,
            vectors,
            ids: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            texts: Vec::with_capacity(n),
        };
        for _ in 0..n {
            page.ids.push(r.string()?);
            page.metadata.push(r.string()?);
            page.texts.push(r.string()?);
        }
        r.done()?;
        Ok(page)
    }
}

const BITMAP_MAGIC: &[u8; 4] = b"TVD1";

/// Rows that are no longer live (deleted or replaced) among those a tenant's index holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bitmap(pub Vec<u64>);

impl Bitmap {
    pub fn contains(&self, row: u32) -> bool {
        self.0
            .get(row as usize / 64)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }
    pub fn insert(&mut self, row: u32) {
        let word = row as usize / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (row % 64);
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(BITMAP_MAGIC);
        w.u32(self.0.len() as u32);
        for word in &self.0 {
            w.u64(*word);
        }
        w.finish()
    }
    pub fn decode(value: &[u8]) -> Result<Bitmap, String> {
        let mut r = Reader::open(value, BITMAP_MAGIC)?;
        let n = r.u32()? as usize;
        if n > value.len() / 8 {
            return Err("bitmap claims more words than it has bytes".into());
        }
        let words = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        r.done()?;
        Ok(Bitmap(words))
    }
}

const IDS_MAGIC: &[u8; 4] = b"TVI1";

/// A shard of the map from document id to its live row: sorted by id.
pub fn encode_ids(entries: &[(String, u32)]) -> Vec<u8> {
    let mut w = Writer::new(IDS_MAGIC);
    w.u32(entries.len() as u32);
    for (id, row) in entries {
        w.bytes(id.as_bytes());
        w.u32(*row);
    }
    w.finish()
}

pub fn decode_ids(value: &[u8]) -> Result<Vec<(String, u32)>, String> {
    let mut r = Reader::open(value, IDS_MAGIC)?;
    let n = r.u32()? as usize;
    if n > value.len() / 8 {
        return Err("id shard claims more entries than it has bytes".into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.string()?;
        out.push((id, r.u32()?));
    }
    r.done()?;
    Ok(out)
}

const FLOATS_MAGIC: &[u8; 4] = b"TVF1";

/// Floats with a leading count: centroids, calibration queries.
pub fn encode_floats(values: &[f32]) -> Vec<u8> {
    let mut w = Writer::new(FLOATS_MAGIC);
    w.u32(values.len() as u32);
    w.f32s(values);
    w.finish()
}

pub fn decode_floats(value: &[u8]) -> Result<Vec<f32>, String> {
    let mut r = Reader::open(value, FLOATS_MAGIC)?;
    let n = r.u32()? as usize;
    let out = r.f32s(n)?;
    r.done()?;
    Ok(out)
}

const CALIBRATION_MAGIC: &[u8; 4] = b"TVQ1";

/// A true neighbour of a calibration query: its row, its cluster and its distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub row: u32,
    pub cluster: u32,
    pub distance: f32,
}

/// Vectors held out as queries (each a document's own vector, its row left out of its truth)
/// with their true nearest rows, to measure the recall of the clusters a search reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    pub dims: usize,
    pub queries: Vec<(u32, Vec<f32>, Vec<Neighbour>)>,
}

impl Calibration {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(CALIBRATION_MAGIC);
        w.u32(self.dims as u32);
        w.u32(self.queries.len() as u32);
        for (row, vector, truth) in &self.queries {
            w.u32(*row);
            w.f32s(vector);
            w.u32(truth.len() as u32);
            for n in truth {
                w.u32(n.row);
                w.u32(n.cluster);
                w.f32s(&[n.distance]);
            }
        }
        w.finish()
    }

    pub fn decode(value: &[u8]) -> Result<Calibration, String> {
        let mut r = Reader::open(value, CALIBRATION_MAGIC)?;
        let dims = r.u32()? as usize;
        let n = r.u32()? as usize;
        if n > value.len() / 8 {
            return Err("calibration claims more queries than it has bytes".into());
        }
        let mut queries = Vec::with_capacity(n);
        for _ in 0..n {
            let row = r.u32()?;
            let vector = r.f32s(dims)?;
            let t = r.u32()? as usize;
            let mut truth = Vec::with_capacity(t.min(64));
            for _ in 0..t {
                let row = r.u32()?;
                let cluster = r.u32()?;
                let distance = r.f32s(1)?[0];
                truth.push(Neighbour { row, cluster, distance });
            }
            queries.push((row, vector, truth));
        }
        r.done()?;
        Ok(Calibration { dims, queries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_back_as_written_and_damage_is_refused() {
        let mut page = Page::new(2);
        page.push(7, &[1.0, -2.5], 2.69, "a", "{\"k\":1}", "hello");
        page.tags[0] = 3;
        page.push(9, &[0.0, 3.0], 3.0, "é", "{}", "");
        let bytes = page.encode();
        assert_eq!(Page::decode(&bytes).unwrap(), page);
        let mut damaged = bytes.clone();
        damaged[12] ^= 1;
        assert!(Page::decode(&damaged).unwrap_err().contains("checksum"));
        assert!(Page::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Page::decode(b"{\"generation\":0}").unwrap_err().contains("not a TVP1"));
        let mut text_only = Page::new(0);
        text_only.push_from(&page, 1, true);
        assert_eq!(Page::decode(&text_only.encode()).unwrap().ids, ["é"]);
    }

    #[test]
    fn the_checksum_sees_flipped_swapped_and_cut_bytes() {
        let value: Vec<u8> = (0..1000u32).flat_map(|i| (i * 7919).to_le_bytes()).collect();
        let whole = checksum(&value);
        for at in [0, 5, 31, 32, 999, 3999] {
            let mut flipped = value.clone();
            flipped[at] ^= 0x10;
            assert_ne!(checksum(&flipped), whole, "a flipped bit at {at}");
        }
        let mut swapped = value.clone();
        swapped.swap(8, 40);
        assert_ne!(checksum(&swapped), whole, "two words swapped between lanes");
        let mut swapped = value.clone();
        swapped.swap(0, 64);
        assert_ne!(checksum(&swapped), whole, "two words swapped within a lane");
        assert_ne!(checksum(&value[..3990]), whole);
        let mut zeros = value.clone();
        zeros.extend_from_slice(&[0; 8]);
        assert_ne!(checksum(&zeros), whole, "zeros appended");
    }

    #[test]
    fn bitmaps_ids_and_floats_round_trip() {
        let mut dead = Bitmap::default();
        dead.insert(3);
        dead.insert(200);
        let back = Bitmap::decode(&dead.encode()).unwrap();
        assert!(back.contains(3) && back.contains(200) && !back.contains(4) && !back.contains(9999));
        let ids = vec![("a".to_owned(), 1), ("b".to_owned(), 70_000)];
        assert_eq!(decode_ids(&encode_ids(&ids)).unwrap(), ids);
        assert_eq!(decode_floats(&encode_floats(&[1.5, -0.25])).unwrap(), vec![1.5, -0.25]);
        let calibration = Calibration {
            dims: 2,
            queries: vec![(
                4,
                vec![0.5, 0.5],
                vec![Neighbour {
                    row: 1,
                    cluster: 2,
                    distance: 0.25,
                }],
            )],
        };
        assert_eq!(Calibration::decode(&calibration.encode()).unwrap(), calibration);
    }
}
