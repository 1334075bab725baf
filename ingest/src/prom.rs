//! Prometheus remote_write v1: a snappy-compressed (block format) protobuf
//! `WriteRequest`. Each series' `__name__` is its table, its other labels are
//! tags, and each sample is a row with a Float64 `value` (milliseconds become
//! nanoseconds). Staleness markers (the special NaN Prometheus writes when a
//! series disappears) are not stored: they say "no value", which a query
//! sees as the absence of rows.

use prost::Message;
use tocsin_proto::prometheus::{Sample, TimeSeries, WriteRequest};
use tocsin_storage::TableWrite;

use crate::convert::{EarlyRejection, METRIC_NAME_LABEL, TableWrites, value_block};

/// The bit pattern of Prometheus' staleness marker.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("body is not snappy-compressed (block format) data: {0}")]
    Snappy(#[from] snap::Error),
    #[error("decompressed body is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not a Prometheus WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// The decoded request as storage writes, plus the series refused before
/// storage (no metric name), by index, and the number of samples.
#[derive(Debug, Default)]
pub struct Decoded {
    pub writes: Vec<TableWrite>,
    pub rejected: Vec<EarlyRejection>,
    pub samples: usize,
    pub stale_markers: usize,
}

/// Decompresses and decodes a remote_write body; `max_decoded` bounds the
/// decompressed size (checked before decompressing).
pub fn decode(body: &[u8], max_decoded: usize) -> Result<Decoded, RemoteWriteError> {
    let size = snap::raw::decompress_len(body)?;
    if size > max_decoded {
        return Err(RemoteWriteError::TooLarge { size, limit: max_decoded });
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    let req = WriteRequest::decode(raw.as_slice())?;
    Ok(to_writes(req))
}

fn to_writes(req: WriteRequest) -> Decoded {
    let mut out = Decoded::default();
    let mut writes = TableWrites::default();
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        let TimeSeries { labels, samples } = ts;
        let mut name = None;
        let mut tags = Vec::with_capacity(labels.len());
        for l in labels {
            if l.name == METRIC_NAME_LABEL {
                name = Some(l.value);
            } else {
                tags.push((l.name, l.value));
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            out.rejected.push(EarlyRejection { item: i as u32, reason: "series has no __name__ label".into() });
            continue;
        };
        let mut timestamps = Vec::with_capacity(samples.len());
        let mut values = Vec::with_capacity(samples.len());
        for Sample { value, timestamp } in samples {
            if value.to_bits() == STALE_NAN {
                out.stale_markers += 1;
                continue;
            }
            timestamps.push(timestamp.saturating_mul(1_000_000));
            values.push(value);
        }
        if timestamps.is_empty() {
            continue;
        }
        out.samples += timestamps.len();
        writes.push(&name, value_block(i as u32, tags, timestamps, values));
    }
    out.writes = writes.into_vec();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_proto::prometheus::Label;
    use tocsin_storage::FieldValues;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
        }
    }

    fn body(req: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("compress")
    }

    #[test]
    fn series_become_rows_of_their_metric_table() {
        let req = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("instance", "a"), ("job", "node")], &[(1.0, 1000), (0.0, 2000)]),
                series(&[("__name__", "up"), ("instance", "b"), ("job", "node")], &[(1.0, 1000)]),
                series(&[("__name__", "load1"), ("instance", "a")], &[(0.5, 1000), (f64::from_bits(STALE_NAN), 2000)]),
                series(&[("instance", "c")], &[(1.0, 1000)]),
            ],
            metadata: vec![],
        };
        let d = decode(&body(&req), 1 << 20).expect("decode");
        assert_eq!((d.samples, d.stale_markers), (4, 1));
        assert_eq!(d.writes.len(), 2);
        let up = &d.writes[0];
        assert_eq!((up.table.as_str(), up.blocks.len()), ("up", 2));
        assert_eq!(up.blocks[0].tags, vec![("instance".into(), "a".into()), ("job".into(), "node".into())]);
        assert_eq!(up.blocks[0].timestamps, vec![1_000_000_000, 2_000_000_000]);
        assert_eq!(up.blocks[0].fields[0].values, FieldValues::F64(vec![1.0, 0.0]));
        assert_eq!(d.writes[1].blocks[0].timestamps, vec![1_000_000_000], "the stale marker is not stored");
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].item, 3);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let e = decode(b"not snappy at all", 1 << 20).expect_err("garbage");
        assert!(e.to_string().contains("snappy") || e.to_string().contains("WriteRequest"), "{e}");
        let not_proto = snap::raw::Encoder::new().compress_vec(&[0xff; 32]).expect("compress");
        assert!(matches!(decode(&not_proto, 1 << 20), Err(RemoteWriteError::Protobuf(_))));
        let big =
            body(&WriteRequest { timeseries: vec![series(&[("__name__", "x")], &[(1.0, 1); 1000])], metadata: vec![] });
        assert!(matches!(decode(&big, 100), Err(RemoteWriteError::TooLarge { .. })));
    }
}
