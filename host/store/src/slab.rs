//! The f32 rows of a store's vectors, by slot: row `slot` is `[slot*dims, (slot+1)*dims)`.
//!
//! A slab loaded from a snapshot maps the file (copy-on-write) instead of reading it: opening a
//! big tenant then costs page-table entries, not a copy into fresh memory, and pages a query never
//! touches are never read. Rows written after the load change the private map (the file stays as
//! it was); rows past the mapped ones live in an owned tail.
//!
//! The rows beside a graph are checked lazily: the file carries a CRC per block of rows
//! ([`block_bytes_for`]; the block size is recorded in the file), and a row is checked (with the
//! rest of its blocks) the first time it is read or written. A big tenant's open then neither reads nor keeps resident the f32 rows a query
//! never re-ranks, and a damaged block is still caught before a row from it is used: the row is
//! withheld and the slab reports itself damaged ([`Slab::is_damaged`]).
//!
//! Invariant: rows `[0, mapped_rows)` are in `mapped`, rows from `mapped_rows` on in `owned`,
//! whose length is a whole number of rows. With `checks`, a mapped byte is used only after its
//! block's CRC matched (or once it was written).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::MmapMut;

/// Bytes of rows covered by one CRC in the slab files this tvs writes: whole rows, at least
/// 1 KiB (one 384-d row). A query re-ranks scattered rows, so a row's first use hashes only its
/// block: with 16 KiB blocks (about ten rows, the size before) the first 200 queries after
/// opening a 200k tenant ran at ~0.85 of the next 200, spending the difference on hashing rows
/// nobody asked for. The table costs 4 bytes a block (0.26% of 384-d rows).
pub fn block_bytes_for(dims: usize) -> usize {
    let row_bytes = (dims * 4).max(1);
    row_bytes * 1024usize.div_ceil(row_bytes)
}

/// Largest block size a slab file may record.
pub const MAX_BLOCK_BYTES: usize = 1 << 20;

pub struct Slab {
    dims: usize,
    mapped: Option<MmapMut>,
    mapped_rows: usize,
    owned: Vec<f32>,
    checks: Option<BlockChecks>,
}

/// CRCs of the mapped rows' blocks and which have been checked.
struct BlockChecks {
    block_bytes: usize,
    crcs: Vec<u32>,
    checked: Vec<AtomicU64>,
    damaged: AtomicBool,
}

impl BlockChecks {
    fn new(block_bytes: usize, crcs: Vec<u32>) -> Self {
        let checked = (0..crcs.len().div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        BlockChecks {
            block_bytes,
            crcs,
            checked,
            damaged: AtomicBool::new(false),
        }
    }

    /// Checks the blocks of `bytes` (all mapped rows) that `range` touches; false if one fails.
    fn check(&self, bytes: &[u8], range: std::ops::Range<usize>) -> bool {
        if range.is_empty() {
            return true;
        }
        let block_bytes = self.block_bytes;
        for block in range.start / block_bytes..=(range.end - 1) / block_bytes {
            let (word, bit) = (&self.checked[block / 64], 1u64 << (block % 64));
            if word.load(Ordering::Acquire) & bit != 0 {
                continue;
            }
            let start = block * block_bytes;
            let end = (start + block_bytes).min(bytes.len());
            if crc32fast::hash(&bytes[start..end]) != self.crcs[block] {
                self.damaged.store(true, Ordering::Release);
                return false;
            }
            word.fetch_or(bit, Ordering::AcqRel);
        }
        true
    }
}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("dims", &self.dims)
            .field("mapped_rows", &self.mapped_rows)
            .field("owned_rows", &(self.owned.len() / self.dims.max(1)))
            .finish()
    }
}

impl Slab {
    pub fn new(dims: usize) -> Self {
        Self::from_vec(dims, Vec::new())
    }

    /// A slab over `values` (whole rows).
    pub fn from_vec(dims: usize, values: Vec<f32>) -> Self {
        debug_assert_eq!(values.len() % dims.max(1), 0);
        Slab {
            dims,
            mapped: None,
            mapped_rows: 0,
            owned: values,
            checks: None,
        }
    }

    /// A slab over the first `rows` rows of a mapped little-endian file, checked by the caller,
    /// or with `block_crcs` (the block size and a CRC per block of rows) to check as rows are
    /// used. `None` when the map cannot hold them as f32 (too short, misaligned, a big-endian
    /// machine) or the CRCs do not cover them.
    pub fn from_map(dims: usize, map: MmapMut, rows: usize, block_crcs: Option<(usize, Vec<u32>)>) -> Option<Self> {
        let bytes = rows.checked_mul(dims)?.checked_mul(4)?;
        let usable = cfg!(target_endian = "little")
            && map.len() >= bytes
            && bytemuck::try_cast_slice::<u8, f32>(&map[..bytes]).is_ok()
            && block_crcs
                .as_ref()
                .is_none_or(|(block, crcs)| *block > 0 && crcs.len() == bytes.div_ceil(*block));
        usable.then(|| Slab {
            dims,
            mapped: Some(map),
            mapped_rows: rows,
            owned: Vec::new(),
            checks: block_crcs.map(|(block, crcs)| BlockChecks::new(block, crcs)),
        })
    }

    /// Whether a row failed its block's CRC: the file under this slab is damaged, and rows from
    /// it were withheld.
    pub fn is_damaged(&self) -> bool {
        self.checks.as_ref().is_some_and(|c| c.damaged.load(Ordering::Acquire))
    }

    /// Checks the mapped bytes of rows `[first, last]`; false when a block fails.
    fn check_rows(&self, first: usize, last: usize) -> bool {
        match (&self.checks, &self.mapped) {
            (Some(checks), Some(map)) => {
                let row_bytes = self.dims * 4;
                checks.check(
                    &map[..self.mapped_rows * row_bytes],
                    first * row_bytes..(last + 1) * row_bytes,
                )
            }
            _ => true,
        }
    }

    /// Checks every mapped row (before the rows are copied into a new snapshot, which would
    /// otherwise vouch for damaged bytes with a fresh CRC); false when a block fails.
    pub fn check_all(&self) -> bool {
        self.mapped_rows == 0 || self.check_rows(0, self.mapped_rows - 1)
    }

    fn mapped_values(&self) -> &[f32] {
        match &self.mapped {
            Some(map) => bytemuck::cast_slice(&map[..self.mapped_rows * self.dims * 4]),
            None => &[],
        }
    }

    fn mapped_values_mut(&mut self) -> &mut [f32] {
        let len = self.mapped_rows * self.dims * 4;
        match &mut self.mapped {
            Some(map) => bytemuck::cast_slice_mut(&mut map[..len]),
            None => &mut [],
        }
    }

    /// The mapped and the owned rows as two runs of values, for scans that visit many rows;
    /// `None` when rows must be checked as they are used (use [`Slab::row`]).
    pub fn runs(&self) -> Option<(&[f32], &[f32])> {
        self.checks
            .is_none()
            .then(|| (self.mapped_values(), self.owned.as_slice()))
    }

    /// Rows held, including zeroed ones of free slots.
    pub fn rows(&self) -> usize {
        self.mapped_rows + self.owned.len() / self.dims.max(1)
    }

    pub fn row(&self, slot: u64) -> Option<&[f32]> {
        let slot = usize::try_from(slot).ok()?;
        let dims = self.dims;
        if slot < self.mapped_rows {
            return self
                .check_rows(slot, slot)
                .then(|| &self.mapped_values()[slot * dims..(slot + 1) * dims]);
        }
        let start = (slot - self.mapped_rows).checked_mul(dims)?;
        self.owned.get(start..start + dims)
    }

    /// Writes `vector` as row `slot`, growing the slab with zeroed rows as needed.
    pub fn set(&mut self, slot: u64, vector: &[f32]) {
        let slot = slot as usize;
        let dims = self.dims;
        if slot < self.mapped_rows {
            // The row's blocks are checked first: once written they count as checked, and the
            // rest of a block must not be vouched for unread.
            self.check_rows(slot, slot);
            self.mapped_values_mut()[slot * dims..(slot + 1) * dims].copy_from_slice(vector);
            return;
        }
        let start = (slot - self.mapped_rows) * dims;
        if self.owned.len() < start + dims {
            self.owned.resize(start + dims, 0.0);
        }
        self.owned[start..start + dims].copy_from_slice(vector);
    }

    /// Zeroes row `slot`, if held.
    pub fn clear(&mut self, slot: u64) {
        let slot = slot as usize;
        let dims = self.dims;
        if slot < self.mapped_rows {
            self.check_rows(slot, slot);
            self.mapped_values_mut()[slot * dims..(slot + 1) * dims].fill(0.0);
        } else if let Some(row) = self
            .owned
            .get_mut((slot - self.mapped_rows) * dims..(slot - self.mapped_rows + 1) * dims)
        {
            row.fill(0.0);
        }
    }

    /// Bytes the slab can occupy in memory: the mapped rows (file pages once touched, private
    /// copies once written) and the owned tail's allocation.
    pub fn memory_bytes(&self) -> usize {
        self.mapped_rows * self.dims * 4 + self.owned.capacity() * 4
    }

    /// Writes the first `rows` rows as little-endian f32; fails on a damaged one.
    /// Values a row holds.
    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn write_rows(&self, out: &mut dyn Write, rows: usize) -> io::Result<()> {
        if !self.check_all() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the vector rows' snapshot fails its checksum",
            ));
        }
        let mapped = rows.min(self.mapped_rows);
        if mapped > 0
            && let Some(map) = &self.mapped
        {
            // Mapped only on little-endian machines: the bytes are the file's format already.
            out.write_all(&map[..mapped * self.dims * 4])?;
        }
        let owned = (rows - mapped) * self.dims;
        crate::snapshot::encode_f32s(out, &self.owned[..owned.min(self.owned.len())])
    }

    /// Each row in slot order, with its slot (mapped rows unchecked: for slabs without lazy
    /// checks, whose file was checked whole).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> {
        debug_assert!(self.checks.is_none());
        let dims = self.dims.max(1);
        self.mapped_values()
            .chunks_exact(dims)
            .chain(self.owned.chunks_exact(dims))
            .enumerate()
            .map(|(slot, row)| (slot as u64, row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_past_the_mapped_ones_grow_an_owned_tail_and_writes_stay_out_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rows");
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = crate::storage::StdFile(std::fs::File::open(&path).expect("open"));
        let map = crate::storage::StorageFile::map_private(&file, bytes.len())
            .expect("map")
            .expect("a file maps");
        let mut slab = Slab::from_map(3, map, 4, None).expect("aligned");
        assert_eq!(slab.rows(), 4);
        assert_eq!(slab.row(1), Some(&[3.0, 4.0, 5.0][..]));
        slab.set(1, &[9.0, 9.0, 9.0]);
        slab.set(5, &[7.0, 7.0, 7.0]);
        slab.clear(0);
        assert_eq!(slab.rows(), 6);
        assert_eq!(slab.row(1), Some(&[9.0, 9.0, 9.0][..]));
        assert_eq!(slab.row(4), Some(&[0.0, 0.0, 0.0][..]), "a gap row is zero");
        assert_eq!(slab.row(5), Some(&[7.0, 7.0, 7.0][..]));
        assert_eq!(slab.row(6), None);
        assert_eq!(std::fs::read(&path).expect("read"), bytes, "the file is unchanged");
        let mut written = Vec::new();
        slab.write_rows(&mut written, 6).expect("write");
        let expected: Vec<u8> = [0.0f32, 0.0, 0.0, 9.0, 9.0, 9.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
            .iter()
            .chain(&[0.0f32, 0.0, 0.0, 7.0, 7.0, 7.0])
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(written, expected);
        assert_eq!(slab.iter().count(), 6);
    }

    #[test]
    fn a_damaged_block_withholds_its_rows_and_only_its_rows() {
        let dims = 1024; // four 4 KiB rows a block
        let values: Vec<f32> = (0..12 * dims).map(|i| i as f32).collect();
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let block = 16 << 10;
        let crcs: Vec<u32> = bytes.chunks(block).map(crc32fast::hash).collect();
        assert_eq!(crcs.len(), 3);
        bytes[5 * dims * 4 + 17] ^= 0x40; // row 5, block 1
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rows");
        std::fs::write(&path, &bytes).expect("write");
        let file = crate::storage::StdFile(std::fs::File::open(&path).expect("open"));
        let map = crate::storage::StorageFile::map_private(&file, bytes.len())
            .expect("map")
            .expect("a file maps");
        let mut slab = Slab::from_map(dims, map, 12, Some((block, crcs))).expect("usable");
        assert_eq!(slab.row(0).map(|r| r[1]), Some(1.0));
        assert!(!slab.is_damaged());
        assert_eq!(slab.row(4), None, "row 4 shares block 1 with the damaged row 5");
        assert!(slab.is_damaged());
        assert_eq!(slab.row(9).map(|r| r[0]), Some((9 * dims) as f32), "block 2 is intact");
        assert!(!slab.check_all());
        assert!(
            slab.write_rows(&mut Vec::new(), 12).is_err(),
            "a damaged slab is not copied into a snapshot"
        );
        slab.set(0, &vec![1.0; dims]);
        assert_eq!(slab.row(0), Some(&vec![1.0; dims][..]));
    }
}
