//! DELTA_BINARY_PACKED column chunks whose deltas the page codec can see.
//!
//! Parquet's DELTA_BINARY_PACKED stores a page as blocks of deltas; each
//! block records its smallest delta, and each miniblock of 32 values stores
//! `delta - min_delta` bit-packed at a width written in its header byte. The
//! arrow-rs writer picks the narrowest width, which for the TSBS random walks
//! is 3 bits: packed values straddle byte boundaries and ZSTD, which models
//! bytes, finds almost nothing left to remove (2.87 bits per value on disk,
//! while the deltas' entropy is 2.15 bits).
//!
//! The format lets a writer choose any width up to 64. [`RepackPageWriter`]
//! re-packs every page with widths rounded up to whole nibbles (0, 4, 8,
//! 12 ...) in blocks of 256: each byte then holds whole deltas, and ZSTD's
//! entropy coder brings them close to their entropy. The page stays standard
//! DELTA_BINARY_PACKED that any Parquet reader decodes; it is written in
//! whichever form (the writer's narrowest, or nibble-aligned) compresses
//! smaller, so data that does not profit (wide counters, timestamps) never
//! grows. Measured on the TSBS `cpu` day: integer fields 2.87 → 2.44 bits per
//! value (docs/storage.md).
//!
//! [`write_chunk`] writes one Int64-backed column chunk this way; the rest of
//! the file (tags, floats, strings) goes through the ordinary Arrow writer.

use std::io::Write;

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::DataType;
use bytes::Bytes;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::{ColumnCloseResult, get_column_writer, get_typed_column_writer_mut};
use parquet::data_type::Int64Type;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterPropertiesPtr;
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use crate::segment::SegmentCompression;

/// Values per block and miniblocks per block of the nibble-aligned form:
/// 8 miniblocks of 32 values. A larger block than arrow-rs' 128 halves the
/// per-block minimum deltas, which compress poorly (measured: 256 beats 128
/// and 1,024 on TSBS data).
const NIBBLE_BLOCK: usize = 256;
const NIBBLE_MINIBLOCKS: usize = 8;

/// Most values one page may declare: far above any page we write (pages are
/// bounded by `page_rows`), low enough that a bad header cannot make the
/// decoder reserve unbounded memory.
const MAX_PAGE_VALUES: u64 = 1 << 31;

/// Is `data_type` stored as a DELTA_BINARY_PACKED INT64 column in segments?
pub(crate) fn is_delta_packed(data_type: &DataType) -> bool {
    // DECIMAL(18, s) is stored on INT64 (precision above 9).
    matches!(data_type, DataType::Int64 | DataType::UInt64 | DataType::Timestamp(_, _))
        || matches!(data_type, DataType::Decimal64(p, _) if *p > 9)
}

/// Why a DELTA_BINARY_PACKED buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeltaError {
    #[error("DELTA_BINARY_PACKED buffer ends inside {0}")]
    Truncated(&'static str),
    #[error("DELTA_BINARY_PACKED header is invalid: {0}")]
    BadHeader(String),
    #[error("DELTA_BINARY_PACKED miniblock bit width {0} exceeds 64")]
    BadWidth(u8),
}

fn put_uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_uleb(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Encodes `values` as DELTA_BINARY_PACKED with nibble-aligned miniblock
/// widths, appending to `out`.
pub(crate) fn encode_nibbles(values: &[i64], out: &mut Vec<u8>) {
    const MINI: usize = NIBBLE_BLOCK / NIBBLE_MINIBLOCKS;
    put_uleb(out, NIBBLE_BLOCK as u64);
    put_uleb(out, NIBBLE_MINIBLOCKS as u64);
    put_uleb(out, values.len() as u64);
    let Some((&first, rest)) = values.split_first() else {
        put_zigzag(out, 0);
        return;
    };
    put_zigzag(out, first);
    let mut prev = first;
    let mut deltas = [0i64; NIBBLE_BLOCK];
    for block in rest.chunks(NIBBLE_BLOCK) {
        let mut min = i64::MAX;
        for (d, &v) in deltas.iter_mut().zip(block) {
            *d = v.wrapping_sub(prev);
            prev = v;
            min = min.min(*d);
        }
        put_zigzag(out, min);
        let widths_at = out.len();
        out.resize(widths_at + NIBBLE_MINIBLOCKS, 0);
        for (m, mini) in deltas[..block.len()].chunks(MINI).enumerate() {
            let max = mini.iter().map(|&d| d.wrapping_sub(min) as u64).max().unwrap_or(0);
            let width = (64 - max.leading_zeros()).div_ceil(4) * 4;
            out[widths_at + m] = width as u8;
            pack(mini.iter().map(|&d| d.wrapping_sub(min) as u64), MINI, width, out);
        }
    }
}

/// Bit-packs `values` (padded with zeros to `count`) at `width` bits each,
/// least significant bit first. `count * width` is a multiple of 8.
fn pack(values: impl Iterator<Item = u64>, count: usize, width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    let mut n = 0;
    for v in values.chain(std::iter::repeat(0)).take(count) {
        acc |= u128::from(v) << bits;
        bits += width;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
        n += 1;
    }
    debug_assert_eq!(n, count);
    debug_assert_eq!(bits, 0);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn uleb(&mut self, what: &'static str) -> Result<u64, DeltaError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(DeltaError::Truncated(what))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DeltaError::BadHeader(format!("{what} is not a valid varint")))
    }

    fn zigzag(&mut self, what: &'static str) -> Result<i64, DeltaError> {
        let v = self.uleb(what)?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DeltaError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(DeltaError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// Decodes a DELTA_BINARY_PACKED buffer of INT64 values into `out`
/// (cleared first). Accepts any valid block layout and widths.
pub(crate) fn decode(buf: &[u8], out: &mut Vec<i64>) -> Result<(), DeltaError> {
    out.clear();
    let mut r = Reader { buf, pos: 0 };
    let block = r.uleb("block size")?;
    let minis = r.uleb("miniblock count")?;
    let count = r.uleb("value count")?;
    let first = r.zigzag("first value")?;
    if block == 0 || block % 128 != 0 || minis == 0 || block % minis != 0 || (block / minis) % 32 != 0 {
        return Err(DeltaError::BadHeader(format!("block size {block} with {minis} miniblocks")));
    }
    if count > MAX_PAGE_VALUES {
        return Err(DeltaError::BadHeader(format!("{count} values in one page")));
    }
    let (block, minis, count) = (block as usize, minis as usize, count as usize);
    let mini = block / minis;
    if count == 0 {
        return Ok(());
    }
    out.reserve(count.min(buf.len() * 8 + 1));
    out.push(first);
    let mut prev = first;
    while out.len() < count {
        let min = r.zigzag("block minimum delta")?;
        let widths_at = r.pos;
        r.take(minis, "miniblock widths")?;
        for m in 0..minis {
            let width = buf[widths_at + m];
            if out.len() >= count {
                break;
            }
            if width > 64 {
                return Err(DeltaError::BadWidth(width));
            }
            let packed = r.take(mini * usize::from(width) / 8, "miniblock")?;
            let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
            let mut acc: u128 = 0;
            let mut bits = 0u32;
            let mut bytes = packed.iter();
            for _ in 0..mini {
                while bits < u32::from(width) {
                    // The slice holds exactly mini * width bits.
                    acc |= u128::from(*bytes.next().unwrap_or(&0)) << bits;
                    bits += 8;
                }
                let v = (acc as u64) & mask;
                acc >>= width;
                bits -= u32::from(width);
                if out.len() < count {
                    prev = prev.wrapping_add(min).wrapping_add(v as i64);
                    out.push(prev);
                }
            }
        }
    }
    Ok(())
}

fn compress(compression: SegmentCompression, data: &[u8]) -> Result<Vec<u8>, ParquetError> {
    match compression {
        SegmentCompression::Zstd(level) => {
            zstd::bulk::compress(data, level).map_err(|e| ParquetError::General(format!("zstd: {e}")))
        }
        SegmentCompression::Lz4 => Ok(lz4_flex::block::compress(data)),
        SegmentCompression::None => Ok(data.to_vec()),
    }
}

/// How many pages a [`RepackPageWriter`] wrote in each form.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RepackStats {
    pub(crate) pages: u64,
    pub(crate) nibble_pages: u64,
}

/// A [`PageWriter`] between an uncompressing column writer and the file:
/// re-packs each DELTA_BINARY_PACKED data page with nibble-aligned widths
/// when that compresses smaller, then compresses the page with the
/// segment's codec. Expects Parquet 1.0 data pages (definition levels, when
/// the column has them, first, behind their 4-byte length).
pub(crate) struct RepackPageWriter<'a, W: Write + Send> {
    inner: SerializedPageWriter<'a, W>,
    compression: SegmentCompression,
    def_levels: bool,
    values: Vec<i64>,
    stats: &'a mut RepackStats,
}

impl<W: Write + Send> PageWriter for RepackPageWriter<'_, W> {
    fn write_page(&mut self, page: CompressedPage) -> parquet::errors::Result<PageWriteSpec> {
        let Page::DataPage { buf, num_values, encoding, def_level_encoding, rep_level_encoding, statistics } =
            page.compressed_page()
        else {
            return Err(ParquetError::General(format!(
                "delta-packed column got a {:?} page; only Parquet 1.0 data pages are expected",
                page.page_type()
            )));
        };
        let levels_len = if self.def_levels {
            let len = buf.get(..4).ok_or_else(|| ParquetError::General("data page shorter than its levels".into()))?;
            4 + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize
        } else {
            0
        };
        let (levels, encoded) = buf
            .split_at_checked(levels_len)
            .ok_or_else(|| ParquetError::General("definition levels overrun the data page".into()))?;
        let mut best = compress(self.compression, buf)?;
        let mut uncompressed = buf.len();
        if *encoding == Encoding::DELTA_BINARY_PACKED {
            decode(encoded, &mut self.values).map_err(|e| ParquetError::General(e.to_string()))?;
            let mut alt = Vec::with_capacity(buf.len() * 2);
            alt.extend_from_slice(levels);
            encode_nibbles(&self.values, &mut alt);
            let packed = compress(self.compression, &alt)?;
            if packed.len() < best.len() {
                best = packed;
                uncompressed = alt.len();
                self.stats.nibble_pages += 1;
            }
        }
        self.stats.pages += 1;
        let page = Page::DataPage {
            buf: Bytes::from(best),
            num_values: *num_values,
            encoding: *encoding,
            def_level_encoding: *def_level_encoding,
            rep_level_encoding: *rep_level_encoding,
            statistics: statistics.clone(),
        };
        self.inner.write_page(CompressedPage::new(page, uncompressed))
    }

    fn close(&mut self) -> parquet::errors::Result<()> {
        self.inner.close()
    }
}

/// Writes `array` (Int64, UInt64 or a timestamp, flat) as one column chunk
/// of `descr` through a [`RepackPageWriter`]. `props` must ask for
/// uncompressed DELTA_BINARY_PACKED Parquet 1.0 pages; the chunk's metadata
/// is then given the real codec. Returns the chunk's bytes (offsets in the
/// metadata are relative to them) for `SerializedRowGroupWriter::append_column`.
pub(crate) fn write_chunk(
    descr: ColumnDescPtr,
    array: &ArrayRef,
    props: &WriterPropertiesPtr,
    compression: SegmentCompression,
    stats: &mut RepackStats,
) -> Result<(Bytes, ColumnCloseResult), ParquetError> {
    if descr.physical_type() != PhysicalType::INT64 || descr.max_rep_level() != 0 {
        return Err(ParquetError::General(format!("column {} is not a flat INT64 column", descr.path())));
    }
    // Timestamps and UInt64 share Int64's layout: reinterpret the bits (a
    // cast would turn UInt64 values above i64::MAX into nulls).
    let ints = array
        .to_data()
        .into_builder()
        .data_type(DataType::Int64)
        .build()
        .map(Int64Array::from)
        .map_err(|e| ParquetError::General(format!("column {}: {e}", descr.path())))?;
    let def_levels = descr.max_def_level() > 0;
    let (values, levels): (Vec<i64>, Option<Vec<i16>>) = match (def_levels, ints.nulls()) {
        (_, Some(nulls)) if nulls.null_count() > 0 => {
            if !def_levels {
                return Err(ParquetError::General(format!("required column {} holds nulls", descr.path())));
            }
            let values = ints.iter().flatten().collect();
            let levels = nulls.iter().map(i16::from).collect();
            (values, Some(levels))
        }
        (true, _) => (ints.values().to_vec(), Some(vec![1; ints.len()])),
        (false, _) => (ints.values().to_vec(), None),
    };

    let mut sink = TrackedWrite::new(Vec::new());
    let pages = RepackPageWriter {
        inner: SerializedPageWriter::new(&mut sink),
        compression,
        def_levels,
        values: Vec::new(),
        stats,
    };
    let mut writer = get_column_writer(descr, props.clone(), Box::new(pages));
    get_typed_column_writer_mut::<Int64Type>(&mut writer).write_batch(&values, levels.as_deref(), None)?;
    let mut close = writer.close()?;
    close.metadata = close.metadata.into_builder().set_compression(compression.parquet()).build()?;
    Ok((Bytes::from(sink.into_inner()?), close))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random walk like the TSBS fields: integer steps of mostly -2..2,
    /// clamped to 0..=100.
    pub(crate) fn walk(n: usize, seed: u64) -> Vec<i64> {
        let mut x = 50i64;
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let step = [-2, -1, -1, 0, 0, 0, 1, 1, 2][(s >> 33) as usize % 9];
                x = (x + step).clamp(0, 100);
                x
            })
            .collect()
    }

    #[test]
    fn nibble_widths_round_up_and_decode_back() {
        let values = walk(1000, 7);
        let mut buf = Vec::new();
        encode_nibbles(&values, &mut buf);
        // Header: 256, 8, 1000 (two varint bytes), first value; then the
        // first block's min delta and its eight widths.
        assert_eq!(&buf[..2], &[0x80, 0x02]);
        assert_eq!(buf[2], 8);
        let mut r = Reader { buf: &buf, pos: 0 };
        for _ in 0..4 {
            r.uleb("header").expect("header");
        }
        r.zigzag("min").expect("min");
        let widths = r.take(8, "widths").expect("widths");
        assert!(widths.iter().all(|w| w % 4 == 0 && *w > 0), "widths {widths:?}");
        let mut back = Vec::new();
        decode(&buf, &mut back).expect("decodes");
        assert_eq!(back, values);
    }

    #[test]
    fn empty_single_and_extreme_values_round_trip() {
        for values in [
            vec![],
            vec![42],
            vec![i64::MIN, i64::MAX, i64::MIN, 0, -1, i64::MAX],
            (0..300).map(|i| i * 1_000_000_007).collect(),
        ] {
            let mut buf = Vec::new();
            encode_nibbles(&values, &mut buf);
            let mut back = vec![99];
            decode(&buf, &mut back).expect("decodes");
            assert_eq!(back, values);
        }
    }

    #[test]
    fn truncated_and_bad_headers_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_nibbles(&walk(600, 3), &mut buf);
        let mut out = Vec::new();
        for cut in [0, 1, 3, 5, 12, buf.len() / 2, buf.len() - 1] {
            assert!(decode(&buf[..cut], &mut out).is_err(), "cut at {cut} decoded");
        }
        // Block size 100 is not a multiple of 128.
        assert!(matches!(decode(&[100, 4, 5, 0], &mut out), Err(DeltaError::BadHeader(_))));
        // A width of 65 bits.
        assert_eq!(decode(&[0x80, 0x01, 4, 10, 0, 0, 65, 0, 0, 0], &mut out), Err(DeltaError::BadWidth(65)));
    }

    proptest! {
        #[test]
        fn any_values_round_trip(values in proptest::collection::vec(any::<i64>(), 0..700),
                                 small in proptest::collection::vec(-9i64..9, 0..700)) {
            for v in [&values, &small] {
                let mut buf = Vec::new();
                encode_nibbles(v, &mut buf);
                let mut back = Vec::new();
                decode(&buf, &mut back).expect("decodes");
                prop_assert_eq!(&back, v);
            }
        }
    }
}
