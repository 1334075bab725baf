"""Shannon information of the `tocsin-bench --float` data, in bytes per value.

The generator (bench/src/data.rs) draws each field as a random walk: the
previous value plus an N(0, 1) step, clamped to [0, 100], kept at full double
precision. A value that is not clamped is one of the doubles the step can
land on, with probability about pdf(step) * ulp(value); a clamped value has
the probability of the step crossing the bound. The mean of -log2 of those
probabilities is the information the data carries: no lossless encoding can
average fewer bits per value.

    python3 bench/models/float_entropy.py        # needs numpy
"""
import math

import numpy as np

HOSTS, FIELDS, STEPS = 100, 10, 8640  # 100 hosts x 24 h at 10 s, as the benchmark

rng = np.random.default_rng(1)
phi = np.vectorize(lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2))))
bits, clamped = 0.0, 0
for _ in range(HOSTS * FIELDS):
    steps = rng.standard_normal(STEPS)
    xs = np.empty(STEPS)
    prev = start = rng.random() * 100
    for i in range(STEPS):
        prev = min(100.0, max(0.0, prev + steps[i]))
        xs[i] = prev
    before = np.concatenate([[start], xs[:-1]])
    low, high = xs == 0.0, xs == 100.0
    inner = ~(low | high)
    step = xs[inner] - before[inner]
    density = np.exp(-step**2 / 2) / math.sqrt(2 * math.pi)
    bits += -np.log2(density * np.spacing(xs[inner])).sum()
    bits += -np.log2(phi(-before[low])).sum() if low.any() else 0.0
    bits += -np.log2(1 - phi(100 - before[high])).sum() if high.any() else 0.0
    clamped += int(low.sum() + high.sum())
n = HOSTS * FIELDS * STEPS
print(f"{n} values, {100 * clamped / n:.2f}% clamped: {bits / n:.2f} bits = {bits / n / 8:.3f} bytes per value")
