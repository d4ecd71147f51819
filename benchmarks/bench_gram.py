"""Distributed Gram engine vs the in-memory kernel, on one machine.

    python benchmarks/bench_gram.py                 # n=16384, d=784, float32, 2 workers
    python benchmarks/bench_gram.py --quick         # n=4096 (about a minute)

FC ReLU depth 3 (3 × [Dense(W_std=√2, b_std=0.1), Relu] + Dense), NNGP and NTK
in one pass. Measures:

* in-memory ``kernel_fn(x, None, get=("nngp", "ntk"))`` with every core
  (numba and BLAS threads = cores), in a fresh process: n² entries / s;
* the Gram pipeline on a warm ``LocalCluster`` of 2 and of 1 single-threaded
  worker processes, end to end: input checks and fingerprints, the copy into
  the store, every block computed, checksummed and written to Zarr, the
  manifest. n² stored
  entries / s, and CPU seconds (workers + client) against the in-memory CPU
  seconds, which is the fair comparison on a machine shared with other jobs.
  "2 workers" is the default config (``io_threads: auto``: no writer threads
  when every core computes); "1 worker" is one single-threaded worker without
  a writer, i.e. one core, the baseline for the scaling ratio. Two more rows:
  one worker with a writer thread (``io_threads: 1``, which is what ``auto``
  gives one worker on a 2-core machine: the writes use the second core, ~1.5
  cores in all), and two workers with writer threads;
* scheduler overhead per block ((wall × slots − Σ task time) / blocks) on a
  many-small-blocks run without io threads, and a no-op Dask round trip;
* the same 1- and 2-worker runs with the store on tmpfs (``--shm``), which
  takes the disk out and shows how the compute scales;
* the store's write bandwidth per task next to ``dd`` on the same disk;
* block size against time and worker peak memory (2 workers, interleaved
  with the runs above).

Each pipeline configuration runs ``--repeat`` times, interleaved with the
others in an order rotated every round, each run after ``sync`` (no earlier
run's writeback inside its time); the best is kept (all times and the median
are in the JSON). Results: ``benchmarks/results/gram.json`` (or
``gram_quick.json``) and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_result  # noqa: E402

LAYERS = [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + \
         [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}]]
GET = ("nngp", "ntk")

IN_MEMORY = """
import json, sys, time, resource
import numpy as np
from ntkscale import stax
layers, get = json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3]))
x = np.load(sys.argv[1], allow_pickle=False)
kfn = stax.from_spec(layers)[2]
kfn(x[:64], None, get=get)                                   # JIT warm-up
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
out = kfn(x, None, get=get)
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": dt, "entries_per_s": len(x) ** 2 / dt,
                  "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
                  "peak_rss_mib": r1.ru_maxrss / 1024}))
"""


def settle() -> None:
    """Flush every dirty page before a timed run: the 2 GiB the previous run
    wrote would otherwise be written back to disk during this one, and the
    kernel's writeback would slow whichever variant happens to run next."""
    os.sync()
    time.sleep(0.5)


def in_memory(x_path: Path) -> Dict[str, Any]:
    """kernel_fn on the whole x with every core, in a fresh process (its 2n² outputs
    would otherwise count towards the workers' peak memory: Linux keeps ru_maxrss
    across exec)."""
    settle()
    out = subprocess.run([sys.executable, "-c", IN_MEMORY, str(x_path), json.dumps(LAYERS), json.dumps(GET)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _config(tmp: Path, store: str, block: int, workers: int, memory: str, io_threads: Any):
    from ntkscale.config.run import RunConfig

    raw = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": LAYERS, "get": list(GET)},
           "store": store, "block_size": block, "dtype": "float32",
           "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1,
                       "io_threads": io_threads, "memory_limit": memory, "dashboard_address": ":0"}}
    return RunConfig.from_mapping(raw, tmp)


def _warm(client: Any, cfg: Any, tmp: Path) -> None:
    """Imports and numba JIT in every worker, on a 256-row Gram."""
    from ntkscale.config.run import ArraySpec, DataConfig
    from ntkscale.stages.gram import GramPipeline

    np.save(tmp / "warm.npy", np.load(tmp / "x.npy", mmap_mode="r", allow_pickle=False)[:256])
    wcfg = cfg.replace(store=str(tmp / "warm.zarr"), block_size=64,
                       data=DataConfig(train=ArraySpec(x=str(tmp / "warm.npy"))))
    shutil.rmtree(wcfg.store, ignore_errors=True)
    GramPipeline(wcfg, progress=False).run(client=client)
    shutil.rmtree(wcfg.store, ignore_errors=True)


def _one_run(client: Any, cfg: Any) -> tuple:
    from ntkscale.stages.gram import GramPipeline

    shutil.rmtree(cfg.store, ignore_errors=True)
    settle()
    cpu0, ccpu0 = client.run(_cpu_s), _cpu_s()
    t = time.perf_counter()
    rep = GramPipeline(cfg, progress=False).run(client=client)
    wall = time.perf_counter() - t
    cpu = sum(v - cpu0[k] for k, v in client.run(_cpu_s).items()) + _cpu_s() - ccpu0
    shutil.rmtree(cfg.store, ignore_errors=True)
    return wall, cpu, rep


def _summary(n: int, cfg: Any, runs: List[tuple], startup: float, peak: float) -> Dict[str, Any]:
    wall, cpu, rep = min(runs, key=lambda r: r[0])
    c = cfg.cluster
    write_s = sum(r["write_s"] for r in rep.records)
    return {
        "workers": c.n_workers, "io_threads": c.io_threads, "block_size": cfg.block_size,
        "blocks": rep.blocks_computed, "store_dir": str(Path(cfg.store).parent),
        "seconds": wall, "all_seconds": [r[0] for r in runs],
        "median_seconds": float(np.median([r[0] for r in runs])), "cpu_s": cpu, "slots": rep.slots,
        "blocks_seconds": rep.blocks_seconds, "cluster_startup_s": startup,
        "entries_per_s": n * n / wall, "task_seconds": rep.task_seconds, "compute_s": rep.compute_seconds,
        "compute_busy": rep.compute_seconds / (wall * rep.slots),
        "read_s": sum(r["read_s"] for r in rep.records), "write_s": write_s,
        "stored_gib": rep.stored_bytes / 2 ** 30,
        "write_gib_per_s_per_task": rep.stored_bytes / write_s / 2 ** 30 if write_s else None,
        "overhead_per_block_s": (rep.blocks_seconds * rep.slots - rep.task_seconds) / max(1, rep.blocks_computed),
        "worker_peak_rss_mib": peak,
    }


def interleaved(tmp: Path, n: int, cfgs: List[Any], repeat: int, x_path: Path) -> tuple:
    """``repeat`` rounds of [in-memory, config 1, config 2, ...] (config order
    rotated every round): on a shared machine the load drifts, and interleaving
    gives every variant the same drift. Best of each kept.

    Each run gets a cluster of its own, started and warmed up before the clock
    starts and closed after it: clusters kept alive between runs are not idle
    (an idle 2-worker LocalCluster costs ~5 % of this 2-core machine, six of
    them 21 %), which would tax the variants that use every core."""
    from ntkscale.cluster.client import open_client

    mem_runs, runs = [], [[] for _ in cfgs]
    startups: List[List[float]] = [[] for _ in cfgs]
    peaks = [0.0 for _ in cfgs]
    for r in range(repeat):
        mem_runs.append(in_memory(x_path))
        for k in _rotated(len(cfgs), r):   # every variant runs first in some round
            t0 = time.perf_counter()
            with open_client(cfgs[k].cluster) as client:
                startups[k].append(time.perf_counter() - t0)
                _warm(client, cfgs[k], tmp)
                runs[k].append(_one_run(client, cfgs[k]))
                peaks[k] = max(peaks[k], max(client.run(_maxrss_mib).values()))
    mem = dict(min(mem_runs, key=lambda r: r["seconds"]), all_seconds=[r["seconds"] for r in mem_runs])
    return mem, [_summary(n, cfg, r, float(np.median(st)), pk)
                 for cfg, r, st, pk in zip(cfgs, runs, startups, peaks, strict=True)]


def _rotated(n: int, shift: int) -> List[int]:
    return [(k + shift) % n for k in range(n)]


def pipeline_runs(tmp: Path, n: int, block: int, workers: int, memory: str, *, io_threads: Any = "auto",
                  repeat: int = 1, label: str = "") -> Dict[str, Any]:
    """``repeat`` end-to-end runs on one warm cluster; the best one, with all times."""
    from ntkscale.cluster.client import open_client

    cfg = _config(tmp, f"run-{label}.zarr", block, workers, memory, io_threads)
    t0 = time.perf_counter()
    with open_client(cfg.cluster) as client:
        startup = time.perf_counter() - t0
        _warm(client, cfg, tmp)
        runs = [_one_run(client, cfg) for _ in range(repeat)]
        peak = max(client.run(_maxrss_mib).values())
    return _summary(n, cfg, runs, startup, peak)


def noop_round_trip(workers: int = 2, tasks: int = 2000) -> float:
    """Seconds per trivial task (submit + schedule + run + result), per slot."""
    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as c, Client(c) as cl:
        cl.submit(lambda: None).result()
        t = time.perf_counter()
        for f in as_completed([cl.submit(lambda i: i, i, pure=False) for i in range(tasks)]):
            f.result()
        return (time.perf_counter() - t) * workers / tasks


def dd(tmp: Path, gib: float) -> Dict[str, float]:
    out = {}
    count = max(1, int(gib * 16))
    for name, extra in (("page_cache", []), ("fdatasync", ["conv=fdatasync"])):
        path = tmp / "dd.bin"
        t = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64M", f"count={count}", *extra],
                       check=True, capture_output=True)
        out[f"dd_{name}_gib_per_s"] = count / 16 / (time.perf_counter() - t)
        path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--block", type=int, default=4096, help="block size of the main runs")
    ap.add_argument("--sweep", default="2048,4096,8192", help="block sizes for the trade-off table")
    ap.add_argument("--memory", default="4GiB", help="memory_limit per worker")
    ap.add_argument("--repeat", type=int, default=5, help="runs per configuration (best and median kept)")
    ap.add_argument("--quick", action="store_true", help="n=4096, block 1024, sweep 512,1024,2048")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--name", default=None, help="result file name (default: gram for the default sizes, "
                    "gram_quick, else gram_n<N>_b<B>)")
    ap.add_argument("--shm", default="/dev/shm", help="tmpfs for the disk-free scaling runs ('' to skip)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.block, args.sweep = 4096, 1024, "512,1024,2048"
    tmp = Path(tempfile.mkdtemp(prefix="bench_gram_", dir=args.dir))
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        np.save(tmp / "x.npy", np.random.default_rng(0).standard_normal((args.n, args.d)).astype(np.float32))
        res: Dict[str, Any] = {"machine": machine(), "n": args.n, "d": args.d, "dtype": "float32",
                               "get": list(GET), "layers": LAYERS, "block": args.block}
        say(f"in-memory kernel_fn and the pipeline, interleaved, {args.repeat} rounds ...")
        shm = Path(tempfile.mkdtemp(prefix="bench_gram_", dir=args.shm)) if args.shm else None
        try:
            cfgs = [_config(tmp, f"run-w{w}io{io}.zarr", args.block, w, args.memory, io)
                    for w, io in ((2, "auto"), (1, 0), (1, 1), (2, 1))]
            n_disk = len(cfgs)
            if shm is not None:
                # The same runs with the store in memory (tmpfs): the disk out of the way,
                # so 1 -> 2 workers shows how the compute scales.
                cfgs += [_config(tmp, str(shm / f"run-shm{w}.zarr"), args.block, w, args.memory, io)
                         for w, io in ((2, "auto"), (1, 0))]
            n_main = len(cfgs)
            # the block-size trade-off: 2 workers (default config) at the other sizes, same protocol
            sizes = [int(b) for b in args.sweep.split(",")]
            cfgs += [_config(tmp, f"run-b{b}.zarr", b, 2, args.memory, "auto") for b in sizes if b != args.block]
            res["in_memory"], runs = interleaved(tmp, args.n, cfgs, args.repeat, tmp / "x.npy")
        finally:
            if shm is not None:
                shutil.rmtree(shm, ignore_errors=True)
        res["pipeline"], res["tmpfs"], others = runs[:n_disk], runs[n_disk:n_main], runs[n_main:]
        two, one = runs[:2]
        im = res["in_memory"]
        res["ratio_vs_in_memory"] = two["entries_per_s"] / im["entries_per_s"]
        res["cpu_ratio_vs_in_memory"] = im["cpu_s"] / two["cpu_s"]
        res["speedup_2_vs_1_worker"] = two["entries_per_s"] / one["entries_per_s"]
        res["median_speedup_2_vs_1_worker"] = one["median_seconds"] / two["median_seconds"]
        res["cpu_per_entry_1_vs_2_workers"] = one["cpu_s"] / two["cpu_s"]
        if res["tmpfs"]:
            res["tmpfs_speedup_2_vs_1_worker"] = (res["tmpfs"][0]["entries_per_s"]
                                                  / res["tmpfs"][1]["entries_per_s"])
            res["tmpfs_ratio_vs_in_memory"] = res["tmpfs"][0]["entries_per_s"] / im["entries_per_s"]
        res["block_sweep"] = sorted([two] + others, key=lambda r: r["block_size"])
        say("many small blocks (scheduler overhead) ...")
        small_n = min(args.n, 4096)
        np.save(tmp / "x.npy", np.random.default_rng(1).standard_normal((small_n, args.d)).astype(np.float32))
        res["small_blocks"] = pipeline_runs(tmp, small_n, 128, 2, args.memory, io_threads=0, label="small")
        res["noop_task_s_per_slot"] = noop_round_trip()
        res.update(dd(tmp, min(2.0, two["stored_gib"])))
        res["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # only the configuration writes results/gram.json (docs and plots read it)
    default = (args.n, args.d, args.block) == (16384, 784, 4096)
    name = args.name or ("gram_quick" if args.quick else "gram" if default else f"gram_n{args.n}_b{args.block}")
    path = save_result(name, res)
    report(res)
    print(f"\nsaved {path}")


def report(res: Dict[str, Any]) -> None:
    im, m = res["in_memory"], res["machine"]
    print(f"\n## Gram engine: n={res['n']}, d={res['d']}, float32, NNGP+NTK, block {res['block']} "
          f"({m['cores']} cores, load {m['load_1min']} -> {m['load_1min_end']})\n")
    rows = [{"what": "in-memory kernel_fn, all cores", "wall s": im["seconds"],
             "median s": float(np.median(im["all_seconds"])), "CPU s": im["cpu_s"],
             "Mentries/s": im["entries_per_s"] / 1e6}]
    for r in res["pipeline"] + res.get("tmpfs", []):
        where = ", store on tmpfs" if r in res.get("tmpfs", []) else ""
        rows.append({"what": f"pipeline, {r['workers']} worker(s) x 1 + {r['io_threads']} io thread{where}",
                     "wall s": r["seconds"], "median s": r.get("median_seconds", r["seconds"]), "CPU s": r["cpu_s"],
                     "Mentries/s": r["entries_per_s"] / 1e6,
                     "kernel busy": r["compute_busy"], "write GiB/s/task": r["write_gib_per_s_per_task"]})
    print_table(rows, ["what", "wall s", "median s", "CPU s", "Mentries/s", "kernel busy", "write GiB/s/task"])
    print(f"\n2 workers / in-memory: {res['ratio_vs_in_memory']:.2f} (wall), "
          f"{res['cpu_ratio_vs_in_memory']:.2f} (CPU s); 2 workers / 1 worker: {res['speedup_2_vs_1_worker']:.2f} "
          f"(wall, best; {res['median_speedup_2_vs_1_worker']:.2f} median), CPU s of 1 worker / 2 workers "
          f"{res['cpu_per_entry_1_vs_2_workers']:.2f}")
    if res.get("tmpfs"):
        print(f"store on tmpfs: 2 workers / in-memory {res['tmpfs_ratio_vs_in_memory']:.2f}, "
              f"2 workers / 1 worker {res['tmpfs_speedup_2_vs_1_worker']:.2f}")
    print(f"scheduler overhead: {res['small_blocks']['overhead_per_block_s'] * 1e3:.1f} ms per block "
          f"(B=128, {res['small_blocks']['blocks']} blocks); no-op Dask task "
          f"{res['noop_task_s_per_slot'] * 1e3:.2f} ms per slot")
    print(f"dd on the same disk: {res['dd_page_cache_gib_per_s']:.2f} GiB/s (page cache), "
          f"{res['dd_fdatasync_gib_per_s']:.2f} GiB/s (fdatasync)\n")
    print_table([{"block": r["block_size"], "blocks": r["blocks"], "wall s": r["seconds"],
                  "median s": r.get("median_seconds", r["seconds"]),
                  "Mentries/s": r["entries_per_s"] / 1e6, "kernel busy": r["compute_busy"],
                  "task memory MiB (model)": r["block_size"] ** 2 * 4 * (len(GET) + 1) / 2 ** 20,
                  "worker peak RSS MiB": r["worker_peak_rss_mib"]} for r in res["block_sweep"]],
                ["block", "blocks", "wall s", "median s", "Mentries/s", "kernel busy", "task memory MiB (model)",
                 "worker peak RSS MiB"])


if __name__ == "__main__":
    main()
