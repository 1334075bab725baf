//! Counting repeated messages of an encoded protobuf on the wire, without
//! decoding it. Decoding makes each message a struct of tens of bytes
//! however small it is on the wire (an empty log record is 2 bytes), so a
//! body within the size limit can still take gigabytes: ingest paths count
//! first and refuse what would not fit. gRPC services do it in their
//! codec ([`BoundedCodec`]), before tonic hands the message over.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};

/// One field: its number, wire type and (length-delimited) bytes, and the
/// rest after it; `None` when malformed.
fn field(b: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
    let mut buf = b;
    let key = prost::encoding::decode_varint(&mut buf).ok()?;
    let (number, wire) = (key >> 3, key & 7);
    let (value, rest): (&[u8], &[u8]) = match wire {
        0 => {
            prost::encoding::decode_varint(&mut buf).ok()?;
            (&[], buf)
        }
        1 => (&[], buf.get(8..)?),
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
            (buf.get(..len)?, buf.get(len..)?)
        }
        5 => (&[], buf.get(4..)?),
        _ => return None,
    };
    Some((number, wire, value, rest))
}

/// How many messages sit at `path` in `buf`: each level lists the field
/// numbers (length-delimited) to descend into, the last level the ones to
/// count. `None` when the bytes are malformed (decoding then says how).
pub fn count(mut buf: &[u8], path: &[&[u64]]) -> Option<usize> {
    let Some((level, deeper)) = path.split_first() else { return Some(0) };
    let mut n = 0usize;
    while !buf.is_empty() {
        let (number, wire, value, rest) = field(buf)?;
        if wire == 2 && level.contains(&number) {
            n = n.saturating_add(if deeper.is_empty() { 1 } else { count(value, deeper)? });
        }
        buf = rest;
    }
    Some(n)
}

/// Log records of an `ExportLogsServiceRequest`.
pub const OTLP_LOG_RECORDS: &[&[u64]] = &[&[1], &[2], &[2]];
/// Spans of an `ExportTraceServiceRequest`.
pub const OTLP_SPANS: &[&[u64]] = &[&[1], &[2], &[2]];
/// Data points of an `ExportMetricsServiceRequest` (gauge, sum, histogram,
/// exponential histogram, summary).
pub const OTLP_DATA_POINTS: &[&[u64]] = &[&[1], &[2], &[2], &[5, 7, 9, 10, 11], &[1]];
/// Entries of a Loki `PushRequest`.
pub const LOKI_ENTRIES: &[&[u64]] = &[&[1], &[2]];
/// Events of a `WriteLogsRequest`.
pub const TOCSIN_LOG_EVENTS: &[&[u64]] = &[&[3]];

/// Most items (log records, spans, data points, log events) one request may
/// hold: each costs a struct of a few hundred bytes once decoded, however
/// small it is on the wire.
pub const MAX_ITEMS: usize = 262_144;
/// Most messages of any kind counted by a [`Bound`] (items and what they
/// nest: attributes, span events and links) in one request.
pub const MAX_ELEMENTS: usize = 1 << 20;

/// What a request message may hold, counted on the wire before it is
/// decoded.
#[derive(Debug)]
pub struct Bound {
    /// What the items are, for the refusal ("spans").
    pub items: &'static str,
    /// Where the items are.
    pub item_path: &'static [&'static [u64]],
    /// Where the other counted messages are (attributes, events, links).
    pub nested: &'static [&'static [&'static [u64]]],
}

impl Bound {
    /// Why `buf` is refused, if it holds too much; `None` when it fits or
    /// is malformed (decoding then says how).
    pub fn check(&self, buf: &[u8]) -> Option<String> {
        let items = count(buf, self.item_path)?;
        if items > MAX_ITEMS {
            return Some(format!("the request holds {items} {}; at most {MAX_ITEMS} are accepted", self.items));
        }
        let mut elements = items;
        for path in self.nested {
            elements = elements.saturating_add(count(buf, path)?);
        }
        (elements > MAX_ELEMENTS).then(|| {
            format!(
                "the request holds {elements} {} and nested messages (attributes, events, links); at most \
                 {MAX_ELEMENTS} are accepted",
                self.items
            )
        })
    }
}

/// The bound of a message type decoded from the network, if it has one.
pub trait WireBound {
    const BOUND: Option<Bound> = None;
}

impl WireBound for crate::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest {
    const BOUND: Option<Bound> = Some(Bound {
        items: "spans",
        item_path: OTLP_SPANS,
        nested: &[
            &[&[1], &[2], &[2], &[9, 11, 13]],
            &[&[1], &[2], &[2], &[11], &[3]],
            &[&[1], &[2], &[2], &[13], &[4]],
        ],
    });
}

impl WireBound for crate::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest {
    const BOUND: Option<Bound> =
        Some(Bound { items: "log records", item_path: OTLP_LOG_RECORDS, nested: &[&[&[1], &[2], &[2], &[6]]] });
}

impl WireBound for crate::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest {
    const BOUND: Option<Bound> = Some(Bound {
        items: "data points",
        item_path: OTLP_DATA_POINTS,
        // Number and summary points' attributes are field 7, histogram
        // points' 9, exponential histogram points' 1.
        nested: &[&[&[1], &[2], &[2], &[5, 7, 9, 10, 11], &[1], &[1, 7, 9]]],
    });
}

impl WireBound for crate::v1::WriteLogsRequest {
    const BOUND: Option<Bound> =
        Some(Bound { items: "log events", item_path: TOCSIN_LOG_EVENTS, nested: &[&[&[3], &[8]]] });
}

impl WireBound for crate::v1::WriteRequest {
    const BOUND: Option<Bound> =
        Some(Bound { items: "log events", item_path: &[&[3], &[3]], nested: &[&[&[3], &[3], &[8]]] });
}

/// The gRPC codec of every service here: prost's, with requests that have a
/// [`Bound`] counted on the wire before they are decoded
/// (`RESOURCE_EXHAUSTED` naming the bound).
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireBound + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(PhantomData)
    }
}

/// Decodes `U` after checking its [`Bound`].
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireBound> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(bound) = U::BOUND {
            // The message is one contiguous buffer; were it not, it is
            // copied once to be counted.
            let refusal = if buf.chunk().len() == buf.remaining() {
                bound.check(buf.chunk())
            } else {
                let bytes = buf.copy_to_bytes(buf.remaining());
                let refusal = bound.check(&bytes);
                if refusal.is_none() {
                    return U::decode(bytes).map(Some).map_err(|e| Status::invalid_argument(e.to_string()));
                }
                refusal
            };
            if let Some(reason) = refusal {
                return Err(Status::resource_exhausted(format!("{reason}: send smaller batches")));
            }
        }
        U::decode(buf).map(Some).map_err(|e| Status::invalid_argument(e.to_string()))
    }
}
