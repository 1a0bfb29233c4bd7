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
    """name -> (minilora's kernel on NumPy, the same math as numexpr expressions), each returning an array."""
    from minilora import kernels
    f32 = np.float32
    n, c, f = 512, 576, 1536
    gate, up, g = (rng.standard_normal((n, f), dtype=f32) for _ in range(3))
    s = (1 + np.tanh(0.5 * gate)) / 2
    scores = rng.standard_normal((12, 384, 128), dtype=f32)
    x, w, gx = rng.standard_normal((n, c), dtype=f32), rng.standard_normal(c, dtype=f32), rng.standard_normal((n, c), dtype=f32)
    eps = 1e-5
    r = (1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)).astype(f32)
    env = dict(gate=gate, up=up, g=g, s=s, x=x, w=w, gx=gx, r=r, half=f32(0.5), one=f32(1.0), inv_c=f32(1.0 / c))

    def expr(text):  # numexpr reads its variables from env (a lambda's frame does not hold them)
        return lambda: ne.evaluate(text, local_dict=env)

    def forward(kernel, *arrays, **options):
        return kernel.primitive.forward(*arrays, **options)

    def softmax_ne():
        m = scores.max(-1, keepdims=True)
        z = ne.evaluate("exp(scores - m)", local_dict=dict(scores=scores, m=m))
        tot = z.sum(-1, keepdims=True)
        return ne.evaluate("z / tot", local_dict=dict(z=z, tot=tot), out=z)

    def rms_backward_ne():
        m = np.einsum("ij,j,ij->i", gx, w, x)[:, None] * r  # sum(gh * xhat) per row
        return ne.evaluate("r * (gx * w - x * r * m * inv_c)", local_dict=dict(env, m=m))

    swiglu_vjp = forward(kernels.swiglu, gate, up)[1]
    rms_vjp = forward(kernels.rms_norm, x, w, eps=eps)[1]
    return {
        "swiglu forward": (lambda: forward(kernels.swiglu, gate, up)[0],
                           expr("gate * (half + half * tanh(half * gate)) * up")),
        "swiglu backward (d gate)": (lambda: swiglu_vjp(g, (True, False))[0],
                                     expr("g * up * s * (one + gate * (one - s))")),
        "softmax (attention)": (lambda: forward(kernels.softmax, scores)[0], softmax_ne),
        "rms_norm forward": (lambda: forward(kernels.rms_norm, x, w, eps=eps)[0], expr("x * r * w")),
        "rms_norm backward (d x)": (lambda: rms_vjp(gx, (True, False))[0], rms_backward_ne),
        "residual add": (lambda: x + gx, expr("x + gx")),
    }


def median_times(fns, repeats: int) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat (they share the load)."""
    for fn in fns:
        fn(), fn()  # warm-up: first-touch pages, numexpr's compile cache
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", default=os.path.join(HERE, "results", "bench_elementwise.json"))
    args = p.parse_args(argv)
    sys.path[:0] = [HERE, os.path.dirname(HERE)]
    from minilora.runtime import tune_allocator
    tuned = tune_allocator()  # as bench_step: freed temporaries are reused, not page-faulted in again
    import numexpr as ne
    import numpy as np

    from common import machine, table, write_json
    info = dict(machine(), load_average_start=os.getloadavg(), numexpr=ne.__version__, numpy=np.__version__,
                numexpr_vml=bool(ne.use_vml), malloc_tuned=tuned)
    print(f"element-wise kernels, float32, step shapes; load average {info['load_average_start']}")
    rows = []
    for name, (plain, fast) in cases(np, ne, np.random.default_rng(0)).items():
        np.testing.assert_allclose(fast(), plain(), rtol=1e-4, atol=1e-4)  # the same numbers, or no comparison
        def threaded(n, fast=fast):
            return lambda: (ne.set_num_threads(n), fast())

        numpy_s, one_s, two_s = median_times([plain, threaded(1), threaded(2)], args.repeats)
        row = {"kernel": name, "numpy_ms": 1e3 * numpy_s, "numexpr_1t_ms": 1e3 * one_s, "numexpr_2t_ms": 1e3 * two_s,
               "ratio_1t": one_s / numpy_s, "ratio_2t": two_s / numpy_s}
        rows.append(row)
    print(table(rows, ["kernel", "numpy_ms", "numexpr_1t_ms", "ratio_1t", "numexpr_2t_ms", "ratio_2t"]))
    result = dict(benchmark="bench_elementwise", machine=info, load_average_end=os.getloadavg(), rows=rows)
    write_json(args.json, result)
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
