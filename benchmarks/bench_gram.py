"""The Gram engine against its roofline (issue 14).

    python benchmarks/bench_gram.py                 # FC3 n=16384 and CNTK-GAP-3 8x8x1 n=1536
    python benchmarks/bench_gram.py --quick         # small sizes (about a minute; no targets judged)

Two cases, NNGP + NTK, float32, 2 single-threaded workers with the default
``io_threads`` (``auto``), store on the local disk (every chunk fsync'd before
its manifest entry, :mod:`ntkscale.store.durable`):

* ``fc``: FC ReLU depth 3, n = 16384, d = 784, block 4096 (issue 14's case:
  the writes bind);
* ``conv``: CNTK-GAP depth 3 on 8×8×1 images, n = 1536, block 256 (the
  compute binds);
* ``fc_io1``: ``fc`` with one writer thread per worker (``io_threads: 1``)
  instead of ``auto``'s two; reported, no target.

The roofline of a run is ``max(T_compute, T_write)``:

* ``T_compute``: the same blocks, in the same order, computed by the same
  workers on the same warm cluster, each under the same compute gate, with
  no store (inputs from a memory-mapped ``.npy``; results dropped): the wall
  time from the first submit to the last result;
* ``T_write``: the bytes the engine writes (both kernels, mirrors and
  diagonals included) at the store disk's sequential fsync'd bandwidth,
  measured by ``dd bs=64M conv=fsync`` of the same size (at most 2 GiB) in the
  same directory, next to every run.

Efficiency = roofline / the engine's block phase (first submit to last block
written); end to end (input checks, store creation, input copy, lock) is
reported too. Each round runs, on one fresh warm cluster, the in-memory
blocks and the engine (order alternated between rounds) and ``dd``; the
median round counts. Before a round counts, the engine's store is checked: every
block's sampled rows (and the same columns of its mirror) against the
in-memory run's, and two 64×64 corners against ``kernel_fn`` in this process.
Where the time goes is rebuilt per worker from the block records' time stamps
(compute, input read, write not hidden behind compute, scheduler/idle) and
plotted with the roofline: ``benchmarks/plots/gram_roofline.png``.

Also kept for the suite's table (``benchmarks/suite.py``): the unblocked
in-memory ``kernel_fn(x, None)`` with both cores and a 1-worker engine run
(FC only, one run each). Results: ``benchmarks/results/gram.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_result  # noqa: E402
from protocol import Target  # noqa: E402

FC = [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}], ["Relu", {}]] * 3 + [["Dense", {"W_std": 2 ** 0.5, "b_std": 0.1}]]
GET = ("nngp", "ntk")
GOAL = 0.9
#: Rows of each block the in-memory run keeps for the check (every SAMPLE-th).
SAMPLE = 64
HERE = Path(__file__).resolve().parent

IN_MEMORY = """
import json, sys, time, resource
import numpy as np
from ntkscale import stax
x = np.load(sys.argv[1], allow_pickle=False)
kfn = stax.from_spec(json.loads(sys.argv[2]))[2]
kfn(x[:64], None, get=("nngp", "ntk"))
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
kfn(x, None, get=("nngp", "ntk"))
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": dt, "entries_per_s": len(x) ** 2 / dt,
                  "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)}))
"""


def case_specs(quick: bool) -> Dict[str, Dict[str, Any]]:
    from ntkscale import stax

    conv = stax.presets.cntk(3)[2].spec
    if quick:
        out = {"fc": dict(layers=FC, shape=(784,), n=2048, block=1024),
               "conv": dict(layers=conv, shape=(8, 8, 1), n=256, block=128)}
    else:
        out = {"fc": dict(layers=FC, shape=(784,), n=16384, block=4096),
               "conv": dict(layers=conv, shape=(8, 8, 1), n=1536, block=256)}
    # the same FC run with one writer thread per worker instead of auto's two (no target)
    out["fc_io1"] = dict(out["fc"], io_threads=1)
    return out


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(tmp: Path, case: Dict[str, Any], workers: int, store: str = "run.zarr"):
    from ntkscale.config.run import RunConfig

    raw = {"data": {"train": {"x": "x.npy"}}, "kernel": {"layers": case["layers"], "get": list(GET)},
           "store": store, "block_size": case["block"], "dtype": "float32",
           "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1,
                       "io_threads": case.get("io_threads", "auto"),
                       "memory_limit": "4GiB", "dashboard_address": ":0"}}
    return RunConfig.from_mapping(raw, tmp)


def settle() -> None:
    """No earlier run's writeback inside the next clock."""
    os.sync()
    time.sleep(0.5)


# ----------------------------------------------------------------------------- runs


def compute_only(x_path: str, spec_json: str, block: Any, io_threads: int, budget: int) -> Dict[str, Any]:
    """Dask task: one block computed like the engine's task (same kernel_fn cache, same
    compute gate), inputs from a memory-mapped .npy, nothing stored; sampled rows back."""
    from ntkscale.gram.compute import backend_for, compute_block, compute_diag, kernel_fn_for
    from ntkscale.gram.schedule import compute_gate

    _, xp = backend_for("auto")
    kfn = kernel_fn_for(spec_json)
    x = np.load(x_path, mmap_mode="r", allow_pickle=False)
    rows = np.asarray(x[block.rows[0]:block.rows[1]])
    cols = None if block.is_diag or block.symmetric else np.asarray(x[block.cols[0]:block.cols[1]])
    with compute_gate(io_threads):
        if block.is_diag:
            out = compute_diag(kfn, rows, get=GET, dtype="float32", xp=xp)
        else:
            out = compute_block(kfn, rows, cols, get=GET, dtype="float32", xp=xp, memory_budget=budget)
    return {k: (v if block.is_diag else v[::SAMPLE].copy()) for k, v in out.items()}


def in_memory_blocks(client: Any, x_path: Path, spec_json: str, plan: Any, cfg: Any) -> Tuple[float, Dict]:
    from distributed import wait

    from ntkscale.gram.schedule import submission_order

    from ntkscale.stages.budget import task_memory

    blocks = submission_order(plan.blocks)
    args = (cfg.cluster.io_threads, task_memory(cfg) // 2)   # the engine's gate and memory budget
    settle()
    t = time.perf_counter()
    futs = [client.submit(compute_only, str(x_path), spec_json, b, *args, pure=False) for b in blocks]
    wait(futs)
    wall = time.perf_counter() - t
    return wall, {b.key: f.result() for b, f in zip(blocks, futs, strict=True)}


def engine(client: Any, cfg: Any) -> Dict[str, Any]:
    from ntkscale.stages.gram import GramPipeline

    shutil.rmtree(cfg.store, ignore_errors=True)
    settle()
    cpu0, ccpu0 = client.run(_cpu_s), _cpu_s()
    w0, t = time.time(), time.perf_counter()
    rep = GramPipeline(cfg, progress=False).run(client=client)
    wall = time.perf_counter() - t
    cpu = sum(v - cpu0[k] for k, v in client.run(_cpu_s).items()) + _cpu_s() - ccpu0
    startup = rep.seconds - rep.blocks_seconds
    window = (w0 + startup, w0 + startup + rep.blocks_seconds)
    return {"seconds": wall, "blocks_seconds": rep.blocks_seconds, "startup_s": startup, "cpu_s": cpu,
            "slots": rep.slots, "blocks": rep.blocks_computed, "stored_bytes": rep.stored_bytes,
            "compute_s": rep.compute_seconds, "task_seconds": rep.task_seconds,
            "write_s": sum(r["write_s"] for r in rep.records),
            "write_data_s": sum(r.get("write_data_s", 0.0) for r in rep.records),
            "breakdown": timeline(rep.records, window), "_records": rep.records}


def timeline(records: List[Dict[str, Any]], window: Tuple[float, float], step: float = 1e-3) -> Dict[str, float]:
    """Where each worker's compute slot spent the block phase, averaged over workers
    (seconds, summing to the block phase): ``compute`` (a block computing),
    ``write`` (no block computing while one is being written: the write not hidden
    behind compute), ``read`` (inputs read or waiting for the gate), ``scheduler``
    (the worker had no block: submit latency, the tail, Dask's round trips)."""
    t0, t1 = window
    grid = np.arange(t0, t1, step)
    out = {"compute": 0.0, "write": 0.0, "read": 0.0, "scheduler": 0.0}
    workers = sorted({r["worker"] for r in records})
    for w in workers:
        comp, wr, rd = (np.zeros(len(grid), bool) for _ in range(3))
        for r in (r for r in records if r["worker"] == w):
            c0, c1 = r["t_compute"]
            comp |= (grid >= c0) & (grid < c1)
            wr |= (grid >= c1) & (grid < r["t_end"])
            rd |= (grid >= r["t_start"]) & (grid < c0)
        out["compute"] += comp.sum() * step
        out["write"] += (wr & ~comp).sum() * step
        out["read"] += (rd & ~comp & ~wr).sum() * step
        out["scheduler"] += (~(comp | wr | rd)).sum() * step
    return {k: v / max(1, len(workers)) for k, v in out.items()}


def dd_fsync(directory: Path, nbytes: int) -> Dict[str, float]:
    """Sequential fsync'd write bandwidth of ``directory``'s disk: ``dd bs=64M conv=fsync``
    of ``nbytes`` rounded up to 64 MiB, at most 2 GiB."""
    count = int(min(32, max(1, -(-nbytes // 2 ** 26))))
    path = directory / "dd.bin"
    settle()
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64M", f"count={count}", "conv=fsync"],
                   check=True, capture_output=True)
    dt = time.perf_counter() - t
    path.unlink()
    return {"bytes": count * 2 ** 26, "seconds": dt, "bytes_per_s": count * 2 ** 26 / dt}


def check_store(store_path: Path, plan: Any, samples: Dict[str, Dict[str, np.ndarray]], kfn: Any,
                x: np.ndarray) -> float:
    """Max relative difference of the store against the in-memory blocks' sampled rows
    (and the same columns of each mirror) and against ``kernel_fn`` here on two 64×64
    corners; raises when above 1e-5 (float32), so a wrong run is never timed."""
    from ntkscale.store.gram_store import GramStore

    store = GramStore.open(store_path)
    worst = 0.0
    for kind in GET:
        full, diag = store.train_array(kind), store.diag("train", kind)
        for b in plan.blocks:
            ref = samples[b.key][kind]
            if b.is_diag:
                got = [diag[b.rows[0]:b.rows[1]]]
            else:
                (r0, r1), (c0, c1) = b.rows, b.cols
                got = [full[r0:r1:SAMPLE, c0:c1]]
                if b.mirrored:
                    got.append(full[c0:c1, r0:r1:SAMPLE].T)
            for g in got:
                worst = max(worst, float(np.max(np.abs(g - ref)) / np.max(np.abs(ref))))
        for (r, c) in ((0, 0), (0, plan.blocks[-1].cols[0])):
            ref = kfn(x[r:r + 64], x[c:c + 64], get=(kind,))[0]
            worst = max(worst, float(np.max(np.abs(full[r:r + 64, c:c + 64] - ref)) / np.max(np.abs(ref))))
    if not worst <= 1e-5:
        raise RuntimeError(f"the engine's store differs from the in-memory blocks: max rel {worst:.3g}; not timed")
    return worst


def run_case(name: str, case: Dict[str, Any], tmp: Path, repeat: int, say: Any) -> Dict[str, Any]:
    from ntkscale import stax
    from ntkscale.cluster.client import open_client
    from ntkscale.config.run import ArraySpec, DataConfig
    from ntkscale.stages.gram import GramPipeline
    from ntkscale.store.blocks import make_plan

    d = tmp / name
    d.mkdir()
    say(f"{name}: n={case['n']}, block {case['block']}, io_threads {case.get('io_threads', 'auto')}")
    x = np.random.default_rng(0).standard_normal((case["n"],) + tuple(case["shape"])).astype(np.float32)
    np.save(d / "x.npy", x)
    cfg = _config(d, case, 2)
    kfn = stax.from_spec(case["layers"])[2]
    plan = make_plan(case["n"], 0, case["block"])
    spec_json = GramPipeline(cfg, progress=False).kernel_fn.spec_json   # the form a block task gets
    np.save(d / "warm.npy", x[:256])
    warm = _config(d, dict(case, block=64), 2, "warm.zarr").replace(
        data=DataConfig(train=ArraySpec(x=str(d / "warm.npy"))))
    rounds = []
    for r in range(repeat):
        with open_client(cfg.cluster) as client:
            engine(client, warm)                        # imports and numba JIT in every worker
            shutil.rmtree(warm.store, ignore_errors=True)
            first_engine = r % 2 == 0
            if first_engine:
                eng = engine(client, cfg)
            t_compute, samples = in_memory_blocks(client, d / "x.npy", spec_json, plan, cfg)
            if not first_engine:
                eng = engine(client, cfg)
            # the workers' peak RSS over the round (in-memory blocks and engine run alike)
            eng["worker_peak_rss_mib"] = max(client.run(_maxrss_mib).values())
        dd = dd_fsync(d, eng["stored_bytes"])
        eng["max_rel_diff"] = check_store(Path(cfg.store), plan, samples, kfn, x)
        shutil.rmtree(cfg.store, ignore_errors=True)
        eng.pop("_records")
        t_write = eng["stored_bytes"] / dd["bytes_per_s"]
        roof = max(t_compute, t_write)
        rounds.append(dict(eng, t_compute=t_compute, t_write=t_write, dd=dd, roofline=roof,
                           binds="write" if t_write > t_compute else "compute",
                           efficiency=roof / eng["blocks_seconds"], efficiency_end_to_end=roof / eng["seconds"],
                           load_1min=os.getloadavg()[0], engine_first=first_engine))
        say(f"{name} round {r + 1}/{repeat}: block phase {eng['blocks_seconds']:.2f} s, T_compute "
            f"{t_compute:.2f} s, T_write {t_write:.2f} s -> {rounds[-1]['efficiency']:.2f}")
    med = sorted(rounds, key=lambda q: q["efficiency"])[len(rounds) // 2]
    return {"n": case["n"], "block": case["block"], "sample_shape": list(case["shape"]), "layers": case["layers"],
            "workers": 2, "io_threads": cfg.cluster.io_threads, "rounds": rounds, "median": med,
            "efficiency_median": statistics.median(q["efficiency"] for q in rounds),
            "efficiency_end_to_end_median": statistics.median(q["efficiency_end_to_end"] for q in rounds)}


def legacy(tmp: Path, case: Dict[str, Any], fc: Dict[str, Any]) -> Dict[str, Any]:
    """The keys ``benchmarks/suite.py`` reads: the unblocked in-memory call on both cores and
    a 1-worker engine run, next to the 2-worker median round (one run each)."""
    from ntkscale.cluster.client import open_client

    d = tmp / "fc"
    settle()
    out = subprocess.run([sys.executable, "-c", IN_MEMORY, str(d / "x.npy"), json.dumps(case["layers"])],
                         capture_output=True, text=True, check=True)
    im = json.loads(out.stdout.strip().splitlines()[-1])
    cfg1 = _config(d, case, 1, "one.zarr")
    with open_client(cfg1.cluster) as client:
        one = engine(client, cfg1)
        one["worker_peak_rss_mib"] = max(client.run(_maxrss_mib).values())
    shutil.rmtree(cfg1.store, ignore_errors=True)
    n2 = case["n"] ** 2
    rows = []
    for workers, io, r in ((2, fc["io_threads"], fc["median"]), (1, cfg1.cluster.io_threads, one)):
        rows.append({"workers": workers, "io_threads": io, "block_size": case["block"], "blocks": r["blocks"],
                     "seconds": r["seconds"], "cpu_s": r["cpu_s"], "entries_per_s": n2 / r["seconds"],
                     "compute_busy": r["breakdown"]["compute"] / r["blocks_seconds"],
                     "write_gib_per_s_per_task": r["stored_bytes"] / r["write_s"] / 2 ** 30,
                     "worker_peak_rss_mib": r.get("worker_peak_rss_mib")})
    return {"in_memory": im, "pipeline": rows, "block_sweep": rows[:1],
            "ratio_vs_in_memory": rows[0]["entries_per_s"] / im["entries_per_s"],
            "cpu_ratio_vs_in_memory": im["cpu_s"] / rows[0]["cpu_s"],
            "speedup_2_vs_1_worker": rows[0]["entries_per_s"] / rows[1]["entries_per_s"]}


def plot(res: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(res["cases"])
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 3.8), squeeze=False)
    parts = [("startup_s", "start-up", "0.6"), ("compute", "compute", "tab:blue"), ("read", "input read", "tab:cyan"),
             ("write", "write not hidden", "tab:red"), ("scheduler", "scheduler / idle", "tab:orange")]
    for ax, name in zip(axes[0], cases):
        c = res["cases"][name]
        rounds = c["rounds"]
        for y, q in enumerate(rounds):
            left = 0.0
            for key, label, color in parts:
                v = q[key] if key == "startup_s" else q["breakdown"][key]
                ax.barh(y, v, left=left, color=color, label=label if y == 0 else None)
                left += v
            ax.text(left, y, f" {q['efficiency']:.2f} ({q['binds']})", va="center", fontsize=8)
        for y, q in enumerate(rounds):   # the roofline, drawn from the end of start-up
            ax.plot([q["startup_s"] + q["t_compute"]] * 2, [y - 0.4, y + 0.4], "k-", lw=2,
                    label="T_compute (in memory)" if y == 0 else None)
            ax.plot([q["startup_s"] + q["t_write"]] * 2, [y - 0.4, y + 0.4], "k:", lw=2,
                    label="T_write (bytes / dd fsync)" if y == 0 else None)
        ax.set_yticks(range(len(rounds)))
        ax.set_yticklabels([f"round {k + 1}" for k in range(len(rounds))], fontsize=8)
        ax.set_xlim(0, 1.3 * max(q["seconds"] for q in rounds))
        ax.set_xlabel("seconds (per worker's compute slot)")
        shape = "x".join(map(str, c["sample_shape"]))
        ax.set_title(f"{name}: n={c['n']}, {shape}, block {c['block']}, io_threads {c['io_threads']}; "
                     f"median eff. {c['efficiency_median']:.2f}",
                     fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    m = res["machine"]
    fig.suptitle(f"Gram engine vs its roofline max(T_compute, T_write): 2 workers, fsync'd store\n"
                 f"{m['cores']} cores, load {m['load_1min']} -> {m.get('load_1min_end')}, {m['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds per case (the median counts)")
    ap.add_argument("--quick", action="store_true", help="small sizes; targets not judged")
    ap.add_argument("--cases", default="fc,fc_io1,conv")
    ap.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: a temp dir)")
    ap.add_argument("--name", default=None, help="result file name (default: gram, or gram_quick)")
    # accepted for the suite's older command lines; the sizes are the cases' own
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--shm", default=None)
    args = ap.parse_args()
    quick = args.quick or (args.n is not None and args.n < 16384)
    specs = case_specs(quick)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gram_", dir=args.dir))
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    res: Dict[str, Any] = {"machine": machine(), "dtype": "float32", "get": list(GET), "quick": quick, "cases": {}}
    try:
        for name in args.cases.split(","):
            res["cases"][name] = run_case(name, specs[name], tmp, args.repeat, say)
        if "fc" in res["cases"]:
            fc = specs["fc"]
            res.update(n=fc["n"], d=fc["shape"][0], block=fc["block"], layers=FC)
            res.update(legacy(tmp, fc, res["cases"]["fc"]))
        res["machine"]["load_1min_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["targets"] = [] if quick else [
        Target(f"Gram engine {name} (n={c['n']}, block {c['block']}, 2 workers, fsync'd store): "
               f"roofline / block phase", GOAL).judge(c["efficiency_median"])
        for name, c in res["cases"].items() if "io_threads" not in specs[name]]
    path = save_result(args.name or ("gram_quick" if quick else "gram"), res)
    if not quick:
        plot(res, HERE / "plots" / "gram_roofline.png")
    report(res)
    print(f"\nsaved {path}")


def report(res: Dict[str, Any]) -> None:
    m = res["machine"]
    print(f"\n## Gram engine vs its roofline ({m['cores']} cores, load {m['load_1min']} -> {m['load_1min_end']})\n")
    rows = []
    for name, c in res["cases"].items():
        for k, q in enumerate(c["rounds"]):
            b = q["breakdown"]
            rows.append({"case": f"{name} n={c['n']} B={c['block']}", "round": k + 1, "end to end s": q["seconds"],
                         "start-up s": q["startup_s"], "block phase s": q["blocks_seconds"],
                         "T_compute s": q["t_compute"], "T_write s": q["t_write"],
                         "dd GB/s": q["dd"]["bytes_per_s"] / 1e9, "binds": q["binds"],
                         "efficiency": q["efficiency"], "e2e eff.": q["efficiency_end_to_end"],
                         "compute": b["compute"], "write": b["write"], "read": b["read"],
                         "sched.": b["scheduler"], "load": q["load_1min"]})
    print_table(rows, list(rows[0]))
    for t in res.get("targets", []):
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['name']}: {t['value']:.3f} (>= {t['goal']})")


if __name__ == "__main__":
    main()
