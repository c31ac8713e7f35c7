"""How far Adam with block-wise 8-bit moments drifts from float Adam, per quantization map: why `adam8bit` compands.

    python -m benchmarks.adam8bit_maps [--steps 200] [--size 4096] [--out docs/adam8bit_maps.json]

Simulates `--steps` Adam steps on random gradients whose scale is spread log-uniformly over 0 to 3 decades across
the values (so a block of 256 holds values that differ by up to that much, as the channels of one kernel do), runs
float Adam and an 8-bit Adam side by side on the same gradients, and reports the relative L2 distance of the last
update. Maps: `companding` is `tinytl_tf.ops.adam8bit` itself; `linear` (codes j / 127 of the block maximum for m,
k / 256 without zero for sqrt(v)) and `dynamic tree` (Dettmers et al. 2021, Section 2: per decade, linearly spaced
fractions, nearest code; unsigned for v) are modelled in NumPy here. A benchmark, not a test.
"""

import argparse
import json
from pathlib import Path

import numpy as np

B1, B2, EPS, BLOCK = 0.9, 0.999, 1e-8, 256
DECADES = (0, 1, 2, 3)


def dynamic_tree(signed):
    """The dynamic tree map's 256 values in [-1, 1] (signed) or [0, 1]: 7 decades, 10^-6..1, each split into a
    power of two of linearly spaced fractions between 0.1 and 1 (more for the larger decades), plus 0 and 1."""
    values = [0.0, 1.0]
    for i in range(7):
        count = 2**i if signed else 2 ** (i + 1)
        edges = np.linspace(0.1, 1.0, count + 1)
        mids = 10.0 ** (i - 6) * (edges[:-1] + edges[1:]) / 2
        values += list(mids) + (list(-mids) if signed else [])
    return np.unique(values)


def blockwise(x, quantize):
    n = len(x)
    blocks = np.pad(x, (0, -n % BLOCK)).reshape(-1, BLOCK)
    scale = np.abs(blocks).max(axis=1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    return (quantize(blocks / safe) * scale).reshape(-1)[:n]


def nearest(table):
    def quantize(y):
        i = np.clip(np.searchsorted(table, y), 1, len(table) - 1)
        lo, hi = table[i - 1], table[i]
        return np.where(np.abs(y - lo) <= np.abs(hi - y), lo, hi)

    return quantize


def numpy_maps():
    signed, unsigned = nearest(dynamic_tree(True)), nearest(dynamic_tree(False))
    return {
        "linear": (
            lambda m: blockwise(m, lambda y: np.round(y * 127) / 127),
            lambda r: blockwise(r, lambda y: np.clip(np.round(y * 256), 1, 256) / 256),
        ),
        "dynamic tree": (lambda m: blockwise(m, signed), lambda r: np.sqrt(blockwise(r * r, unsigned))),
    }


def drift(decades, steps, n, seed, map_step):
    """Relative L2 distance of the 8-bit update from float Adam's after `steps` steps."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-decades, 0, n)
    m = v = np.zeros(n)
    state = None
    for t in range(1, steps + 1):
        g = (rng.standard_normal(n) * scale + 0.3 * scale).astype(np.float32)
        m = m + (g - m) * (1 - B1)
        v = v + (g.astype(np.float64) ** 2 - v) * (1 - B2)
        alpha = np.sqrt(1 - B2**t) / (1 - B1**t)
        want = alpha * m / (np.sqrt(v) + EPS)
        got, state = map_step(g, state, alpha)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def numpy_step(quantize_m, quantize_r):
    def step(g, state, alpha):
        m_hat, r_hat = state or (0.0, 0.0)
        m = m_hat + (g - m_hat) * (1 - B1)
        r = np.sqrt(r_hat**2 + (g.astype(np.float64) ** 2 - r_hat**2) * (1 - B2))
        return alpha * m / (r + EPS), (quantize_m(m), quantize_r(r))

    return step


def companding_step(n):
    import tensorflow as tf

    from tinytl_tf.ops import adam8bit

    blocks = adam8bit.Blocks(n)

    def step(g, state, alpha):
        state = state or [tf.zeros([n], tf.int8), tf.zeros([blocks.count])] * 2
        value, state = adam8bit.adam8bit_step(tf.zeros([n]), tf.constant(g), state, alpha, blocks, B1, B2, EPS)
        return -value.numpy().astype(np.float64), list(state)

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/adam8bit_maps.json")
    args = p.parse_args(argv)

    from tinytl_tf.atomic import atomic_write

    steps = {"companding": companding_step(args.size)}
    steps.update({name: numpy_step(*maps) for name, maps in numpy_maps().items()})
    print(f"relative L2 distance of the update from float Adam's after {args.steps} steps; block {BLOCK}")
    print(f"{'map':<14}" + "".join(f"{f'{d} decades':>12}" for d in DECADES))
    rows = {}
    for name, step in steps.items():
        rows[name] = [drift(d, args.steps, args.size, args.seed, step) for d in DECADES]
        print(f"{name:<14}" + "".join(f"{x:>12.4f}" for x in rows[name]), flush=True)
    result = {"steps": args.steps, "size": args.size, "seed": args.seed, "block": BLOCK, "decades": DECADES}
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps({**result, "drift": rows}, indent=2)))


if __name__ == "__main__":
    main()
