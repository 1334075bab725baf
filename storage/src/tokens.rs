//! Token filters: which words each block of a segment's text column holds,
//! so that a `matches()` search reads only the blocks that may match.
//!
//! A segment's rows are cut into blocks of [`BLOCK_ROWS`] rows (the last
//! one may be shorter). For every column named in [`TOKEN_COLUMNS`], each
//! block gets a bloom filter of the words in its values: the maximal runs of
//! ASCII letters, digits and `_` ([`is_word`], the word rule of
//! `matches()`), ASCII lower-cased. A search term can only occur as whole
//! words where each of its own words is a word of the text, so a block
//! whose filter lacks one of them is skipped without being decoded.
//!
//! The filters are the split-block bloom filters of the Parquet
//! specification (xxHash64, seed 0, 256-bit blocks), sized to each block's
//! distinct words for [`FALSE_POSITIVES`]; they are kept in the segment's
//! own Parquet footer, as key-value metadata under
//! `tocsin.tokens:<column>` (base64 of [`TokenFilter::encode`]'s bytes), so
//! a segment and its filter are written, renamed, compacted and deleted as
//! one file, and other Parquet readers see one more metadata entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use base64::Engine as _;
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::{FileMetaData, ParquetMetaData, ParquetMetaDataBuilder};

/// Text columns that get token filters.
pub const TOKEN_COLUMNS: [&str; 1] = ["message"];

/// Rows per filtered block: a rare word in 10 million log lines leaves
/// about one block in a thousand to read, while the filters cost about
/// 0.27 bytes per row on the generated logs of `tocsin-log-bench` (a
/// distinct word per four or five lines in each block: ids mostly).
pub const BLOCK_ROWS: usize = 8192;

/// False-positive rate each block's filter is sized for, per word.
pub const FALSE_POSITIVES: f64 = 0.01;

/// Key-value metadata keys of token filters: this, then the column's name.
pub const KEY_PREFIX: &str = "tocsin.tokens:";

/// Key-value metadata key of a column's token filter.
pub fn metadata_key(column: &str) -> String {
    format!("{KEY_PREFIX}{column}")
}

/// The bytes words are made of; everything else separates words.
pub fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Calls `f` with every word of `text` (maximal runs of [`is_word`] bytes),
/// ASCII lower-cased into `buf`.
pub fn for_each_word(text: &[u8], buf: &mut Vec<u8>, mut f: impl FnMut(&[u8])) {
    let mut i = 0;
    while i < text.len() {
        if !is_word(text[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && is_word(text[i]) {
            i += 1;
        }
        buf.clear();
        buf.extend(text[start..i].iter().map(u8::to_ascii_lowercase));
        f(buf);
    }
}

/// Why a stored token filter cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFilterError {
    #[error("token filter is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("token filter is damaged: {0}")]
    Damaged(&'static str),
}

/// The token filters of one column of one segment.
#[derive(Debug, Clone)]
pub struct TokenFilter {
    block_rows: usize,
    rows: u64,
    /// One filter per block; `None` for a block without a single word.
    blocks: Vec<Option<Sbbf>>,
    bytes: usize,
}

const FORMAT: u8 = 1;

impl TokenFilter {
    /// The filters of a text column (`Utf8`, `LargeUtf8` or `Utf8View`);
    /// `None` for any other type.
    pub fn build(column: &dyn Array, block_rows: usize) -> Option<TokenFilter> {
        let block_rows = block_rows.max(1);
        let value = |i: usize| -> Option<&[u8]> {
            if column.is_null(i) {
                return None;
            }
            Some(match column.data_type() {
                DataType::Utf8 => column.as_string::<i32>().value(i).as_bytes(),
                DataType::LargeUtf8 => column.as_string::<i64>().value(i).as_bytes(),
                DataType::Utf8View => column.as_string_view().value(i).as_bytes(),
                _ => return None,
            })
        };
        if !matches!(column.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            return None;
        }
        let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let mut seen = ahash::HashSet::default();
        let mut buf = Vec::new();
        let mut blocks = Vec::with_capacity(column.len().div_ceil(block_rows));
        let mut bytes = 0;
        for start in (0..column.len()).step_by(block_rows) {
            let rows = start..(start + block_rows).min(column.len());
            // Sized by the block's distinct words: count them first.
            seen.clear();
            for i in rows.clone() {
                if let Some(text) = value(i) {
                    for_each_word(text, &mut buf, |w| {
                        seen.insert(hasher.hash_one(w));
                    });
                }
            }
            if seen.is_empty() {
                blocks.push(None);
                continue;
            }
            let mut filter = Sbbf::new(&vec![0u8; filter_bytes(seen.len())]);
            for i in rows {
                if let Some(text) = value(i) {
                    for_each_word(text, &mut buf, |w| filter.insert(w));
                }
            }
            bytes += filter.num_blocks() * 32;
            blocks.push(Some(filter));
        }
        Some(TokenFilter { block_rows, rows: column.len() as u64, blocks, bytes })
    }

    /// Rows per block.
    pub fn block_rows(&self) -> usize {
        self.block_rows
    }

    /// Rows of the column the filter was built from.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Bytes of filter bits (memory and, before base64, disk).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether block `block` may hold the (lower-case) word `word`: false
    /// means it certainly does not.
    pub fn may_contain(&self, block: usize, word: &[u8]) -> bool {
        match self.blocks.get(block) {
            Some(Some(f)) => f.check(word),
            Some(None) => false,
            None => true,
        }
    }

    /// The stored form: format byte, rows per block (u32), rows (u64),
    /// block count (u32), each block's filter size in 32-byte units (u32),
    /// then the filters' bits; little-endian, base64 (standard alphabet).
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(17 + 4 * self.blocks.len() + self.bytes);
        out.push(FORMAT);
        out.extend((self.block_rows as u32).to_le_bytes());
        out.extend(self.rows.to_le_bytes());
        out.extend((self.blocks.len() as u32).to_le_bytes());
        for b in &self.blocks {
            out.extend((b.as_ref().map_or(0, Sbbf::num_blocks) as u32).to_le_bytes());
        }
        for b in self.blocks.iter().flatten() {
            // Writing to a Vec cannot fail.
            let _ = b.write_bitset(&mut out);
        }
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Reads [`TokenFilter::encode`]'s form back.
    pub fn decode(text: &str) -> Result<TokenFilter, TokenFilterError> {
        use TokenFilterError::Damaged;
        let raw = base64::engine::general_purpose::STANDARD.decode(text)?;
        let mut r = raw.as_slice();
        let mut take = |n: usize| -> Result<&[u8], TokenFilterError> {
            if r.len() < n {
                return Err(Damaged("it ends early"));
            }
            let (head, rest) = r.split_at(n);
            r = rest;
            Ok(head)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if take(1)?[0] != FORMAT {
            return Err(Damaged("unknown format"));
        }
        let block_rows = u32_at(take(4)?) as usize;
        let rows_bytes = take(8)?;
        let rows = u64::from_le_bytes(rows_bytes.try_into().map_err(|_| Damaged("row count"))?);
        let count = u32_at(take(4)?) as usize;
        if block_rows == 0 || rows.div_ceil(block_rows as u64) != count as u64 {
            return Err(Damaged("its block count does not match its rows"));
        }
        let sizes = take(count.checked_mul(4).ok_or(Damaged("block count"))?)?;
        let sizes: Vec<usize> = sizes.chunks_exact(4).map(|s| u32_at(s) as usize * 32).collect();
        let mut blocks = Vec::with_capacity(count);
        let mut bytes = 0;
        for size in sizes {
            if size == 0 {
                blocks.push(None);
            } else {
                blocks.push(Some(Sbbf::new(take(size)?)));
                bytes += size;
            }
        }
        if !r.is_empty() {
            return Err(Damaged("bytes left after the last block"));
        }
        Ok(TokenFilter { block_rows, rows, blocks, bytes })
    }
}

/// Bytes of a split-block bloom filter for `ndv` distinct words at
/// [`FALSE_POSITIVES`] (the Parquet specification's sizing: eight bits
/// set in one 256-bit block per word), in whole 32-byte blocks.
fn filter_bytes(ndv: usize) -> usize {
    let bits = -8.0 * ndv as f64 / (1.0 - FALSE_POSITIVES.powf(1.0 / 8.0)).ln();
    ((bits / 256.0).ceil() as usize).max(1) * 32
}

/// Token filters read from segment footers, kept while they fit in a byte
/// budget (beyond it, entries leave at random). Segments never change once
/// written, so an entry stays right for as long as its file exists; a
/// segment without filters (written before they existed) is remembered as
/// such.
pub struct FilterCache {
    budget: usize,
    inner: parking_lot::Mutex<CacheInner>,
}

/// A segment's token filters, by column.
pub type ColumnFilters = Vec<(String, Arc<TokenFilter>)>;

/// The filters of one segment, shared.
type Filters = Arc<ColumnFilters>;

#[derive(Default)]
struct CacheInner {
    /// A segment's filters and when they were last used.
    entries: HashMap<PathBuf, (Filters, u64)>,
    bytes: usize,
    tick: u64,
}

fn cost(filters: &Filters) -> usize {
    64 + filters.iter().map(|(c, f)| c.len() + f.bytes()).sum::<usize>()
}

impl FilterCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget: budget_bytes, inner: parking_lot::Mutex::new(CacheInner::default()) }
    }

    /// The filter of `column` in the segment at `path`, read from its
    /// footer the first time. `None` when it has none or it cannot be read
    /// (logged): the caller then reads the whole segment.
    pub fn get(&self, path: &Path, column: &str) -> Option<Arc<TokenFilter>> {
        let cached = {
            let mut inner = self.inner.lock();
            inner.tick += 1;
            let tick = inner.tick;
            inner.entries.get_mut(path).map(|(filters, used)| {
                *used = tick;
                Arc::clone(filters)
            })
        };
        let filters = match cached {
            Some(filters) => filters,
            None => {
                let filters = match read_footer(path) {
                    Ok((_, filters)) => filters,
                    Err(e) => {
                        tracing::warn!(
                            "cannot read the token filters of segment {}: {e}; reading the whole segment",
                            path.display()
                        );
                        Vec::new()
                    }
                };
                self.put(path, filters)
            }
        };
        filters.iter().find(|(c, _)| c == column).map(|(_, f)| Arc::clone(f))
    }

    /// Keeps the filters of the segment at `path` (read by the caller).
    pub fn put(&self, path: &Path, filters: ColumnFilters) -> Filters {
        let filters = Arc::new(filters);
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += cost(&filters);
        if let Some((old, _)) = inner.entries.insert(path.to_path_buf(), (Arc::clone(&filters), tick)) {
            inner.bytes -= cost(&old);
        }
        // Over budget, entries leave at random (but never the one just
        // read): a search over more segments than fit reads them in the
        // same order every time, and evicting the least recently used would
        // then evict each one just before it is needed again; at random, a
        // share of them stays and is found.
        let mut pick = tick;
        while inner.bytes > self.budget && inner.entries.len() > 1 {
            pick = pick.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
            let n = (pick >> 33) as usize % inner.entries.len();
            let Some(victim) = inner.entries.keys().nth(n).filter(|k| k.as_path() != path).cloned() else {
                continue;
            };
            if let Some((f, _)) = inner.entries.remove(&victim) {
                inner.bytes -= cost(&f);
            }
        }
        filters
    }
}

/// Reads a segment's Parquet footer and takes its token filters out of it:
/// the footer without them (a reader that turns key-value metadata into
/// Arrow schema metadata would otherwise copy megabytes with every schema
/// it clones) and the filters, by column. A filter that does not decode, or
/// does not cover the file's rows, is left out (logged).
pub fn read_footer(path: &Path) -> Result<(ParquetMetaData, ColumnFilters), crate::segment::SegmentCheckError> {
    let meta = crate::segment::read_footer(path)?;
    let fm = meta.file_metadata();
    let Some(kv) = fm.key_value_metadata().filter(|kv| kv.iter().any(|k| k.key.starts_with(KEY_PREFIX))) else {
        return Ok((meta, Vec::new()));
    };
    let mut filters = Vec::new();
    let mut kept = Vec::new();
    for entry in kv {
        let Some(column) = entry.key.strip_prefix(KEY_PREFIX) else {
            kept.push(entry.clone());
            continue;
        };
        match entry.value.as_deref().map(TokenFilter::decode) {
            Some(Ok(f)) if f.rows() == fm.num_rows() as u64 => filters.push((column.to_string(), Arc::new(f))),
            Some(Ok(f)) => tracing::warn!(
                "the token filter of column {column} in segment {} covers {} rows, the segment has {}; not used",
                path.display(),
                f.rows(),
                fm.num_rows()
            ),
            Some(Err(e)) => tracing::warn!("column {column} of segment {}: {e}; not used", path.display()),
            None => {}
        }
    }
    let stripped = FileMetaData::new(
        fm.version(),
        fm.num_rows(),
        fm.created_by().map(str::to_string),
        Some(kept),
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let mut old = meta.into_builder();
    let meta = ParquetMetaDataBuilder::new(stripped)
        .set_row_groups(old.take_row_groups())
        .set_column_index(old.take_column_index())
        .set_offset_index(old.take_offset_index())
        .build();
    Ok((meta, filters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text.as_bytes(), &mut Vec::new(), |w| out.push(String::from_utf8_lossy(w).into_owned()));
        out
    }

    #[test]
    fn words_are_runs_of_letters_digits_and_underscores_lower_cased() {
        assert_eq!(
            words("Quota exceeded ERR-7731-QUOTA for t_1."),
            ["quota", "exceeded", "err", "7731", "quota", "for", "t_1"]
        );
        assert_eq!(words("  10.0.0.1:80 "), ["10", "0", "0", "1", "80"]);
        assert_eq!(words("café naïve"), ["caf", "na", "ve"]);
        assert!(words(" -- ").is_empty() && words("").is_empty());
    }

    fn column(rows: usize, rare_at: &[usize]) -> StringArray {
        (0..rows)
            .map(|i| {
                if rare_at.contains(&i) {
                    Some(format!("quota exceeded ERR-7731-QUOTA order {i}"))
                } else if i % 97 == 0 {
                    None
                } else {
                    Some(format!("GET /v/{:08x}.ts 200 in {} ms", i * 2_654_435_761 % 4_294_967_291, i % 400))
                }
            })
            .collect()
    }

    #[test]
    fn a_word_is_found_in_its_block_and_mostly_not_elsewhere() {
        let col = column(5 * 1000 + 17, &[1234, 4999]);
        let f = TokenFilter::build(&col, 1000).expect("a text column");
        assert_eq!((f.len(), f.rows(), f.block_rows()), (6, 5017, 1000));
        for (block, expect) in [(0, false), (1, true), (2, false), (3, false), (4, true), (5, false)] {
            // A false positive is possible but, at 1% per word, not for
            // both words of five blocks of this fixed data.
            let hit = f.may_contain(block, b"quota") && f.may_contain(block, b"err");
            assert_eq!(hit, expect, "block {block}");
        }
        // Every word of every row is found in its block (no false negatives).
        let mut buf = Vec::new();
        for i in 0..col.len() {
            if col.is_valid(i) {
                for_each_word(col.value(i).as_bytes(), &mut buf, |w| assert!(f.may_contain(i / 1000, w), "row {i}"));
            }
        }
        // The false-positive rate is about what the filters are sized for.
        let probes = 20_000;
        let fp = (0..probes).filter(|i| f.may_contain(i % 6, format!("absent{i}").as_bytes())).count();
        assert!(fp < probes * 3 / 100, "{fp} false positives in {probes}");
    }

    #[test]
    fn filters_survive_encoding_and_damage_is_refused() {
        let col = column(2500, &[10]);
        let f = TokenFilter::build(&col, 1024).expect("a text column");
        let text = f.encode();
        let back = TokenFilter::decode(&text).expect("decodes");
        assert_eq!((back.len(), back.rows(), back.block_rows(), back.bytes()), (3, 2500, 1024, f.bytes()));
        assert!(back.may_contain(0, b"7731") && !back.may_contain(1, b"quota"));
        let raw = base64::engine::general_purpose::STANDARD.decode(&text).expect("base64");
        let cut = base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - 1]);
        assert!(TokenFilter::decode(&cut).unwrap_err().to_string().contains("ends early"));
        let mut more = raw.clone();
        more.push(0);
        let more = base64::engine::general_purpose::STANDARD.encode(&more);
        assert!(TokenFilter::decode(&more).unwrap_err().to_string().contains("left after"));
        assert!(TokenFilter::decode("not base64!").is_err());
        assert!(TokenFilter::decode("").is_err());
    }

    /// Over budget, entries leave at random, never the one just put: a
    /// cyclic scan over twice the budget still finds some of them.
    #[test]
    fn the_cache_keeps_to_its_budget_and_survives_cyclic_scans() {
        let filter = Arc::new(TokenFilter::build(&column(5000, &[]), 1000).expect("text"));
        let one = cost(&Arc::new(vec![("message".to_string(), Arc::clone(&filter))]));
        let cache = FilterCache::new(one * 10);
        let paths: Vec<PathBuf> = (0..20).map(|i| PathBuf::from(format!("/nowhere/{i}.parquet"))).collect();
        let mut hits = 0;
        for round in 0..5 {
            for p in &paths {
                let present = cache.inner.lock().entries.contains_key(p);
                if present {
                    hits += 1;
                } else {
                    cache.put(p, vec![("message".to_string(), Arc::clone(&filter))]);
                }
                let inner = cache.inner.lock();
                assert!(inner.bytes <= one * 10, "round {round}: {} bytes", inner.bytes);
                assert!(inner.entries.contains_key(p));
            }
        }
        // Least-recently-used eviction would find none of them.
        assert!(hits > 0, "no hits in 100 reads of 20 segments with room for 10");
        // An unreadable segment is remembered as having no filter.
        assert!(cache.get(Path::new("/nowhere/missing.parquet"), "message").is_none());
    }

    #[test]
    fn blocks_without_words_hold_nothing_and_other_types_get_no_filter() {
        let col: StringArray = vec![None, Some("--"), Some("a b")].into_iter().collect();
        let f = TokenFilter::build(&col, 2).expect("a text column");
        assert!(!f.may_contain(0, b"a") && f.may_contain(1, b"a"));
        assert!(TokenFilter::build(&arrow::array::Int64Array::from(vec![1, 2]), 2).is_none());
    }
}
