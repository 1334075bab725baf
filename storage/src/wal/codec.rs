//! Binary encoding of one WAL entry: a database name and the table writes
//! that one request committed together.
//!
//! Little-endian, length-prefixed, no alignment. The framing around it (length,
//! CRC32, LZ4) lives in [`super::file`]; the WAL file header carries the
//! format version. Arrays of numbers are copied as whole slices so that
//! encoding costs about one `memcpy` of the request.

use crate::write::{FieldColumn, FieldValues, SeriesBlock, TableWrite};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("entry ends early: needed {needed} bytes at offset {offset}, {available} left")]
    Truncated { offset: usize, needed: usize, available: usize },
    #[error("unknown field type tag {0}")]
    UnknownFieldType(u8),
    #[error("string at offset {0} is not valid UTF-8")]
    Utf8(usize),
    #[error("{0} bytes left over after the entry")]
    Trailing(usize),
}

/// A decoded WAL entry.
#[derive(Debug, Clone, PartialEq)]
pub struct WalEntry {
    pub database: String,
    pub writes: Vec<TableWrite>,
}

pub(crate) fn encode(database: &str, writes: &[TableWrite], out: &mut Vec<u8>) {
    put_str(out, database);
    put_u32(out, writes.len() as u32);
    for w in writes {
        put_str(out, &w.table);
        put_u32(out, w.blocks.len() as u32);
        for b in &w.blocks {
            put_u32(out, b.item);
            put_u32(out, b.tags.len() as u32);
            for (k, v) in &b.tags {
                put_str(out, k);
                put_str(out, v);
            }
            put_u32(out, b.timestamps.len() as u32);
            for ts in &b.timestamps {
                out.extend_from_slice(&ts.to_le_bytes());
            }
            put_u32(out, b.fields.len() as u32);
            for f in &b.fields {
                put_str(out, &f.name);
                match &f.values {
                    FieldValues::F64(v) => {
                        out.push(0);
                        v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                    }
                    FieldValues::I64(v) => {
                        out.push(1);
                        v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                    }
                    FieldValues::U64(v) => {
                        out.push(2);
                        v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
                    }
                    FieldValues::Bool(v) => {
                        out.push(3);
                        out.extend(v.iter().map(|&b| b as u8));
                    }
                    FieldValues::Str(v) => {
                        out.push(4);
                        v.iter().for_each(|s| put_str(out, s));
                    }
                }
                match &f.validity {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        out.extend(v.iter().map(|&b| b as u8));
                    }
                }
            }
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(DecodeError::Truncated { offset: self.pos, needed: n, available });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count of items that each take at least `min_size` bytes: checked
    /// against the bytes left so that a corrupt count cannot make us allocate
    /// gigabytes before failing.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let available = self.buf.len() - self.pos;
        if n.saturating_mul(min_size) > available {
            return Err(DecodeError::Truncated { offset: self.pos, needed: n * min_size, available });
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let at = self.pos;
        let b = self.take(n)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| DecodeError::Utf8(at))
    }

    fn words(&mut self, n: usize) -> Result<impl Iterator<Item = [u8; 8]> + 'a, DecodeError> {
        let b = self.take(n * 8)?;
        Ok(b.chunks_exact(8).map(|c| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }

    fn bools(&mut self, n: usize) -> Result<Vec<bool>, DecodeError> {
        Ok(self.take(n)?.iter().map(|&b| b != 0).collect())
    }
}

pub(crate) fn decode(buf: &[u8]) -> Result<WalEntry, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let database = r.string()?;
    let nwrites = r.count(8)?;
    let mut writes = Vec::with_capacity(nwrites);
    for _ in 0..nwrites {
        let table = r.string()?;
        let nblocks = r.count(16)?;
        let mut blocks = Vec::with_capacity(nblocks);
        for _ in 0..nblocks {
            let item = r.u32()?;
            let ntags = r.count(8)?;
            let mut tags = Vec::with_capacity(ntags);
            for _ in 0..ntags {
                tags.push((r.string()?, r.string()?));
            }
            let rows = r.count(8)?;
            let timestamps: Vec<i64> = r.words(rows)?.map(i64::from_le_bytes).collect();
            let nfields = r.count(6)?;
            let mut fields = Vec::with_capacity(nfields);
            for _ in 0..nfields {
                let name = r.string()?;
                let values = match r.u8()? {
                    0 => FieldValues::F64(r.words(rows)?.map(f64::from_le_bytes).collect()),
                    1 => FieldValues::I64(r.words(rows)?.map(i64::from_le_bytes).collect()),
                    2 => FieldValues::U64(r.words(rows)?.map(u64::from_le_bytes).collect()),
                    3 => FieldValues::Bool(r.bools(rows)?),
                    4 => {
                        let mut v = Vec::with_capacity(rows.min(buf.len() / 4));
                        for _ in 0..rows {
                            v.push(r.string()?);
                        }
                        FieldValues::Str(v)
                    }
                    t => return Err(DecodeError::UnknownFieldType(t)),
                };
                let validity = match r.u8()? {
                    0 => None,
                    _ => Some(r.bools(rows)?),
                };
                fields.push(FieldColumn { name, values, validity });
            }
            blocks.push(SeriesBlock { item, tags, timestamps, fields });
        }
        writes.push(TableWrite { table, blocks });
    }
    if r.pos != buf.len() {
        return Err(DecodeError::Trailing(buf.len() - r.pos));
    }
    Ok(WalEntry { database, writes })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Vec<TableWrite> {
        vec![TableWrite {
            table: "cpu".into(),
            blocks: vec![SeriesBlock {
                item: 3,
                tags: vec![("host".into(), "h1".into())],
                timestamps: vec![1, 2, 3],
                fields: vec![
                    FieldColumn {
                        name: "f".into(),
                        values: FieldValues::F64(vec![1.5, f64::INFINITY, -0.0]),
                        validity: None,
                    },
                    FieldColumn {
                        name: "i".into(),
                        values: FieldValues::I64(vec![-1, 0, 1]),
                        validity: Some(vec![true, false, true]),
                    },
                    FieldColumn { name: "u".into(), values: FieldValues::U64(vec![u64::MAX, 0, 7]), validity: None },
                    FieldColumn {
                        name: "b".into(),
                        values: FieldValues::Bool(vec![true, false, true]),
                        validity: None,
                    },
                    FieldColumn {
                        name: "s".into(),
                        values: FieldValues::Str(vec!["x".into(), "".into(), "ünï".into()]),
                        validity: None,
                    },
                ],
            }],
        }]
    }

    #[test]
    fn entries_round_trip() {
        let writes = sample();
        let mut buf = Vec::new();
        encode("public", &writes, &mut buf);
        let e = decode(&buf).expect("decode");
        assert_eq!(e.database, "public");
        assert_eq!(e.writes, writes);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode("public", &sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        let mut buf = Vec::new();
        put_str(&mut buf, "db");
        put_u32(&mut buf, u32::MAX);
        assert!(matches!(decode(&buf), Err(DecodeError::Truncated { .. })));
    }
}
