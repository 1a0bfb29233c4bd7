"""The training step's element-wise kernels: NumPy (what kernels.py runs) against numexpr, same shapes.

numexpr evaluates a whole expression in cache-sized blocks on several threads without temporaries,
which should help the SwiGLU / softmax / RMSNorm / RoPE passes that run single-threaded between the
GEMMs. Whether it does depends on the machine: this bench times each kernel's forward and backward
expressions both ways (float32, SmolLM2-135M step shapes at batch 4 x 128), one after the other in
the same process, and prints the ratio numexpr / NumPy (median of --repeats, per thread count).
A kernel gets a numexpr path only where that ratio is clearly below 1.

Usage: python bench/bench_elementwise.py [--repeats 15] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def cases(np, ne, rng):
    """name -> (numpy function, numexpr function), each returning one float32 array."""
    f32 = np.float32
    n, c, f = 512, 576, 1536
    gate, up, g = (rng.standard_normal((n, f), dtype=f32) for _ in range(3))
    s = (1 + np.tanh(0.5 * gate)) / 2
    scores = rng.standard_normal((12, 384, 128), dtype=f32)
    x, w, gx = rng.standard_normal((n, c), dtype=f32), rng.standard_normal(c, dtype=f32), rng.standard_normal((n, c), dtype=f32)
    r = (1 / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)).astype(f32)
    half, one, c1 = f32(0.5), f32(1.0), f32(0.1)
    env = dict(gate=gate, up=up, g=g, s=s, x=x, w=w, gx=gx, r=r, half=half, one=one, c1=c1)

    def expr(text):  # numexpr reads its variables from env (a lambda's frame does not hold them)
        return lambda: ne.evaluate(text, local_dict=env)

    def swiglu_np():
        t = np.tanh(0.5 * gate)
        t += 1.0
        t *= 0.5
        return gate * t * up

    def swiglu_bwd_np():
        t = 1.0 - s
        t *= gate
        t += 1.0
        t *= s
        t *= up
        t *= g
        return t

    def softmax_np():
        z = np.exp(scores - scores.max(-1, keepdims=True))
        z /= z.sum(-1, keepdims=True)
        return z

    def softmax_ne():
        m = scores.max(-1, keepdims=True)
        z = ne.evaluate("exp(scores - m)", local_dict=dict(scores=scores, m=m))
        tot = z.sum(-1, keepdims=True)
        return ne.evaluate("z / tot", local_dict=dict(z=z, tot=tot), out=z)

    return {
        "swiglu forward": (swiglu_np, expr("gate * (half + half * tanh(half * gate)) * up")),
        "swiglu backward": (swiglu_bwd_np, expr("g * up * s * (one + gate * (one - s))")),
        "softmax (attention)": (softmax_np, softmax_ne),
        "rms_norm apply": (lambda: x * r * w, expr("x * r * w")),
        "rms_norm backward": (lambda: r * (gx * w - x * r * r * c1), expr("r * (gx * w - x * r * r * c1)")),
        "residual add": (lambda: x + gx, expr("x + gx")),
    }


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_elementwise.json"))
    args = p.parse_args(argv)
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    import numexpr as ne
    import numpy as np

    from common import machine, table, write_json
    info = dict(machine(), load_average_start=os.getloadavg(), numexpr=ne.__version__, numpy=np.__version__,
                numexpr_vml=bool(ne.use_vml))
    print(f"element-wise kernels, float32, step shapes; load average {info['load_average_start']}")
    rows = []
    for name, (plain, fast) in cases(np, ne, np.random.default_rng(0)).items():
        np.testing.assert_allclose(fast(), plain(), rtol=2e-5, atol=2e-5)  # the same numbers, or no comparison
        row = {"kernel": name, "numpy_ms": 1e3 * median_time(plain, args.repeats)}
        for threads in (1, 2):
            ne.set_num_threads(threads)
            row[f"numexpr_{threads}t_ms"] = 1e3 * median_time(fast, args.repeats)
            row[f"ratio_{threads}t"] = row[f"numexpr_{threads}t_ms"] / row["numpy_ms"]
        rows.append(row)
    print(table(rows, ["kernel", "numpy_ms", "numexpr_1t_ms", "ratio_1t", "numexpr_2t_ms", "ratio_2t"]))
    result = dict(benchmark="bench_elementwise", machine=info, load_average_end=os.getloadavg(), rows=rows)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
