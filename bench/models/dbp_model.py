"""Model of DELTA_BINARY_PACKED page sizes under ZSTD, used to choose the
nibble-aligned layout of storage/src/delta.rs.

Reads the integer fields of a segment written by `tocsin-bench` (integer data)
and prints the compressed bytes per value of each layout: narrowest widths
(what arrow-rs writes), widths rounded to nibbles or bytes, blocks of 128, 256
or 1,024 values.

    python3 bench/models/dbp_model.py DATA_DIR/segments/public/cpu/*.parquet   # needs numpy, pyarrow
"""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PAGE = 65536


def uleb(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return (n << 1) ^ (n >> 63)


def encode(values, align, block, miniblocks):
    out = bytearray(uleb(block) + uleb(miniblocks) + uleb(len(values)) + uleb(zigzag(int(values[0]))))
    deltas = np.diff(values.astype(np.int64))
    size = block // miniblocks
    for b0 in range(0, len(deltas), block):
        blk = deltas[b0:b0 + block]
        low = int(blk.min())
        out += uleb(zigzag(low))
        rel = blk - low
        widths, chunks = [], []
        for m in range(miniblocks):
            chunk = rel[m * size:(m + 1) * size]
            width = int(chunk.max()).bit_length() if len(chunk) else 0
            if align and width:
                width = -(-width // align) * align
            widths.append(width)
            chunks.append(chunk)
        out += bytes(widths)
        for width, chunk in zip(widths, chunks):
            if len(chunk) and width:
                full = np.zeros(size, dtype=np.uint64)
                full[:len(chunk)] = chunk
                bits = ((full[:, None] >> np.arange(width, dtype=np.uint64)) & 1).astype(np.uint8).ravel()
                out += np.packbits(bits, bitorder="little").tobytes()
    return bytes(out)


table = pa.concat_tables(pq.read_table(f) for f in sys.argv[1:])
fields = [n for n in table.column_names if n.startswith("usage")]
codec = pa.Codec("zstd", compression_level=3)
for align, block, miniblocks in [(0, 128, 4), (4, 128, 4), (8, 128, 4), (4, 256, 8), (4, 1024, 32)]:
    total = 0
    for name in fields:
        v = table.column(name).to_numpy()
        for p in range(0, len(v), PAGE):
            total += len(codec.compress(encode(v[p:p + PAGE], align, block, miniblocks), asbytes=True))
    label = {0: "narrowest", 4: "nibbles", 8: "bytes"}[align]
    print(f"{label:9s} block {block:4d}/{miniblocks:2d}: {total / (len(fields) * table.num_rows):.4f} bytes per value (fields)")
