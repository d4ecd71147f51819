"""One side of a fair comparison (benchmarks/protocol.py), as a long-lived process.

    python benchmarks/side_server.py --side ours      # ntkscale, this venv
    $NT_PY benchmarks/side_server.py --side nt        # neural-tangents 0.6.5, its venv

Reads one JSON request per line on stdin and answers one JSON line on stdout:

* ``{"op": "setup", "work": {...}}``: build the net and the inputs of the
  :class:`protocol.Work`, warm up (jit compilation / numba cache load,
  excluded from every timing) and report what will be computed: input and
  output shapes, dtype, ``get``, a digest of the inputs, threads, versions.
* ``{"op": "save", "path": P}``: compute once and save the result (``.npy``).
* ``{"op": "run"}``: time one evaluation; seconds and the peak RSS above the
  process's resident size just before it (``/proc/self/clear_refs`` resets
  the high-water mark, Linux).
* ``{"op": "floor"}`` (ours): the time of the input GEMM ``x1 @ x2ᵀ`` alone.
* ``{"op": "flops"}`` (ours): flops per entry of the path the engine picks.
* ``{"op": "quit"}``.

The process pins itself to the CPUs in ``NTKSCALE_BENCH_CPUS`` before any
numerical library loads; the thread counts come from the environment the
driver sets (protocol.pinned_env).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

_cpus = os.environ.get("NTKSCALE_BENCH_CPUS")
if _cpus:
    os.sched_setaffinity(0, {int(c) for c in _cpus.split(",")})

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from protocol import Work, build_net, input_digest, make_inputs, reset_peak_rss, status_mib  # noqa: E402


class OursSide:
    name = "ntkscale"

    def __init__(self, work: Work):
        from ntkscale import __version__, stax

        self.work = work
        self.kernel_fn = build_net(stax, work)
        self.x1, self.x2 = make_inputs(work)
        self.versions = {"ntkscale": __version__, "numpy": np.__version__}

    def threads(self) -> int:
        import numba

        return numba.get_num_threads()

    def warm_up(self) -> None:
        small2 = None if self.x2 is None else self.x2[:8]
        self.kernel_fn(self.x1[:8], small2, self.work.get)

    def compute(self) -> np.ndarray:
        return np.asarray(self.kernel_fn(self.x1, self.x2, self.work.get))

    def floor(self) -> dict:
        other = self.x1 if self.x2 is None else self.x2
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.x1.reshape(len(self.x1), -1) @ other.reshape(len(other), -1).T
            times.append(time.perf_counter() - t0)
        return {"gemm_s": float(np.median(times))}

    def flops(self) -> dict:
        shape2 = None if self.x2 is None else self.x2.shape
        exp = self.kernel_fn.explain(self.x1.shape, shape2)
        return {"flops_per_entry": exp.flops_per_entry, "path": exp.path, "total_flops": exp.total_flops}


class NtSide:
    name = "neural-tangents"

    def __init__(self, work: Work, batch_size: int = 0):
        import jax

        if work.dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        import importlib.metadata as md

        import neural_tangents as nt
        from neural_tangents import stax

        self.work, self.jax = work, jax
        kernel_fn = build_net(stax, work)
        self.fn = (nt.batch(kernel_fn, batch_size=batch_size) if batch_size
                   else jax.jit(kernel_fn, static_argnames="get"))
        x1, x2 = make_inputs(work)
        self.x1 = jax.numpy.asarray(x1)
        self.x2 = None if x2 is None else jax.numpy.asarray(x2)
        self.host = (x1, x2)
        self.versions = {"neural-tangents": md.version("neural-tangents"), "jax": jax.__version__,
                         "backend": jax.default_backend()}

    def threads(self) -> int:
        return int(os.environ.get("OMP_NUM_THREADS", "0")) or len(os.sched_getaffinity(0))

    def warm_up(self) -> None:
        self.compute()  # jit compiles per shape: warm up on the real shapes

    def compute(self) -> np.ndarray:
        out = self.fn(self.x1, self.x2, get=self.work.get)
        return np.asarray(out.block_until_ready())


def serve(side_kind: str) -> None:
    side = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "quit":
                print(json.dumps({"ok": True}), flush=True)
                return
            if op == "setup":
                work = Work.from_json(req["work"])
                side = OursSide(work) if side_kind == "ours" else NtSide(work, int(req.get("batch_size", 0)))
                t0 = time.perf_counter()
                side.warm_up()
                warm = time.perf_counter() - t0
                x1, x2 = (side.x1, side.x2) if side_kind == "ours" else side.host
                n2 = len(x1) if x2 is None else len(x2)
                reply = {"side": side.name, "x1_shape": list(x1.shape),
                         "x2_shape": None if x2 is None else list(x2.shape), "dtype": str(x1.dtype),
                         "out_shape": [len(x1), n2], "get": work.get, "input_digest": input_digest(x1, x2),
                         "threads": side.threads(), "cpus": sorted(os.sched_getaffinity(0)),
                         "warmup_s": warm, "versions": side.versions}
            elif side is None:
                raise RuntimeError(f"{op!r} before setup")
            elif op == "save":
                out = side.compute()
                if str(out.dtype) != side.work.dtype:
                    raise RuntimeError(f"{side.name} returned {out.dtype}, asked for {side.work.dtype}")
                np.save(req["path"], out, allow_pickle=False)
                reply = {"shape": list(out.shape)}
            elif op == "run":
                before = status_mib("VmRSS")
                reset_peak_rss()
                t0 = time.perf_counter()
                side.compute()
                secs = time.perf_counter() - t0
                reply = {"seconds": secs, "peak_rss_mib": max(status_mib("VmHWM") - before, 0.0)}
            elif op in ("floor", "flops") and hasattr(side, op):
                reply = getattr(side, op)()
            else:
                raise RuntimeError(f"unknown op {op!r} for the {side_kind} side")
        except Exception as exc:  # reported to the driver, which stops the comparison
            reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        print(json.dumps(reply), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("ours", "nt"), required=True)
    args = ap.parse_args(argv)
    serve(args.side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
