"""A fault soak you can rerun (issue 15): ``python -m benchmarks.soak --seed S --budget SECONDS``.

Real processes and real faults on tiny problems (FC ReLU nets, n <= 160, block 16-32):
worker and driver SIGKILLs, kills during CG checkpoints, Cholesky tiles and
``verify --repair``, damaged chunks and manifest entries, a full tmpfs, two runs on one
store, and fuzzed configs for ``ntkscale plan``. Each trial draws its randomness from
``(seed, kind, trial)`` only, so any failure reruns alone with
``python -m benchmarks.soak --seed S --only KIND --trial N`` (fuzz: the N-th example of
the Hypothesis run seeded with S). Prints a table kind / trials / passed / failed and
optionally writes it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from tests.support.gram import config_dict, make_data, status_json, write_config
from tests.support.processes import cli, kill_group, start_cli, worker_processes
from tests.support.reference import IN_MEMORY_TOL, in_memory_kernels
from tests.support.run import CLUSTER, blobs, run_config

FAULT_DELAY_ENV = "NTKSCALE_FAULT_BLOCK_DELAY"
ENV1 = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PROCS = {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB", "dashboard_address": ":0"}
KIND_ORDER = ["fuzz", "corrupt", "worker", "driver", "cg", "cholesky", "repair", "diskfull", "concurrent"]
MIN_TRIALS = {"fuzz": 200, "corrupt": 8, "worker": 20, "driver": 10, "cg": 3, "cholesky": 3, "repair": 3,
              "diskfull": 2, "concurrent": 3}


class Fail(Exception):
    """A trial's check failed (the message says which)."""


def check(cond: Any, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def poll(pred: Callable[[], Any], proc: Optional[subprocess.Popen] = None, timeout: float = 90.0) -> Any:
    """Like tests.support.processes.wait_for, but returns None (no pytest) on timeout or child exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            v = pred()
        except Exception:  # noqa: BLE001 - a half-written store: not yet
            v = None
        if v:
            return v
        time.sleep(0.02)
    return None


def arrays(store: Path) -> Dict[str, np.ndarray]:
    from ntkscale.store.gram_store import GramStore

    s = GramStore.open(store)
    out = {f"{p}/{k}": s.array(p, k)[...] for p in ("train", "test") for k in s.kinds}
    out.update({f"diag/{w}/{k}": s.diag(w, k) for w in ("train", "test") for k in s.kinds})
    return out


def same_arrays(store: Path, ref: Dict[str, np.ndarray]) -> None:
    got = arrays(store)
    check(sorted(got) == sorted(ref), f"arrays {sorted(got)} != {sorted(ref)}")
    for name, a in ref.items():
        check(np.array_equal(got[name], a), f"{name} differs from the uninterrupted run "
              f"(max abs diff {np.max(np.abs(got[name] - a)):.3g})")


def verify_json(store: Path) -> Tuple[int, Dict[str, Any]]:
    from ntkscale.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["verify", str(store), "--json"])
    return rc, json.loads(buf.getvalue())


class World:
    """Data, configs and uninterrupted reference results, built lazily, shared by trials."""

    def __init__(self, root: Path):
        self.root = root
        self._gram: Optional[Dict[str, Any]] = None
        self._runs: Dict[str, Dict[str, Any]] = {}

    def gram(self) -> Dict[str, Any]:
        """n=48, m=16, block 16 (13 tasks): reference store by an uninterrupted ``ntkscale gram``."""
        if self._gram is None:
            d = self.root / "gram"
            d.mkdir()
            data = make_data(d, n=48, m=16, d=3)
            cfg = write_config(d, config_dict(data, store="ref.zarr", cluster=dict(CLUSTER)), "ref.yaml")
            r = cli("gram", str(cfg), cwd=d, env=ENV1, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"reference gram failed: {r.stderr[-2000:]}")
            ref = arrays(d / "ref.zarr")
            mem = {"train": in_memory_kernels(data, "train"), "test": in_memory_kernels(data, "test")}
            for k in ("nngp", "ntk"):
                for w in ("train", "test"):
                    np.testing.assert_allclose(ref[f"{w}/{k}"], mem[w][k], **IN_MEMORY_TOL["float64"])
            self._gram = {"dir": d, "data": data, "ref": ref, "mem": mem}
        return self._gram

    def gram_config(self, name: str, **over: Any) -> Tuple[Path, Path]:
        g = self.gram()
        cfg = config_dict(g["data"], store=f"{name}.zarr", **over)
        return write_config(g["dir"], cfg, f"{name}.yaml"), g["dir"] / f"{name}.zarr"

    def run(self, method: str) -> Dict[str, Any]:
        """Classification blobs n=160, m=40 and an uninterrupted ``ntkscale run`` with ``method``."""
        if method not in self._runs:
            d = self.root / f"run-{method}"
            d.mkdir()
            data = blobs(d, n=160, m=40, d=6, classes=3, seed=3)
            solver = ({"method": "cg", "ridge": 1e-6, "tol": 1e-10, "preconditioner": "none", "checkpoint_every": 3,
                       "maxiter": 3000} if method == "cg" else {"method": "cholesky", "ridge": 1e-6, "tile": 32})
            cfg = write_config(d, run_config(data, store="ref.zarr", solver=solver), "ref.yaml")
            r = cli("run", str(cfg), "--json", cwd=d, env=ENV1, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"reference run failed: {r.stderr[-2000:]}")
            self._runs[method] = {"dir": d, "data": data, "solver": solver, "metrics": json.loads(
                r.stdout.strip().splitlines()[-1]), "ref": arrays(d / "ref.zarr"), "out": solve_out(d / "ref.zarr")}
        return self._runs[method]


def solve_out(store: Path) -> Dict[str, np.ndarray]:
    from ntkscale.store.gram_store import GramStore

    s = GramStore.open(store)
    return {"alpha": np.asarray(s.group("solver")["alpha"][...]),
            "labels": np.asarray(s.group("predict")["labels"][...])}


# --------------------------------------------------------------------------- trial kinds


def trial_worker(w: World, rng: np.random.Generator, n: int) -> str:
    """SIGKILL a worker process of ``ntkscale gram``: while the cluster starts (even trials) or mid-run."""
    cfg, store = w.gram_config(f"worker{n}", cluster=dict(PROCS))
    log = store.with_suffix(".log")
    proc = start_cli("gram", str(cfg), cwd=cfg.parent, env={**ENV1, FAULT_DELAY_ENV: "0.3"}, log=log)
    try:
        found = poll(lambda: worker_processes(parent=proc.pid, contains=("spawn_main",),
                                              excludes=("resource_tracker",)), proc, timeout=90)
        when = "no worker seen (run ended first)"
        if found:
            delay = float(rng.uniform(0.0, 0.5) if n % 2 == 0 else rng.uniform(0.5, 4.0))
            time.sleep(delay)
            alive = worker_processes(parent=proc.pid, contains=("spawn_main",), excludes=("resource_tracker",))
            if alive:
                victim = alive[int(rng.integers(len(alive)))]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim.pid, signal.SIGKILL)
                when = f"worker killed {delay:.2f} s after the first appeared"
        rc = proc.wait(timeout=240)
    finally:
        kill_group(proc)
    out = log.read_text()
    note = when
    if rc != 0:
        check("Traceback" not in out, f"rc {rc} with a traceback ({when}): {out[-1500:]}")
        r = cli("gram", str(cfg), cwd=cfg.parent, env=ENV1, timeout=240)
        check(r.returncode == 0, f"rerun failed ({when}): {r.stderr[-1500:]}")
        note += f"; run exited {rc}, rerun finished"
    rc_v, rep = verify_json(store)
    check(rc_v == 0, f"verify not clean after the run: {rep}")
    got = arrays(store)
    for k in ("nngp", "ntk"):
        for wh in ("train", "test"):
            np.testing.assert_allclose(got[f"{wh}/{k}"], w.gram()["mem"][wh][k], **IN_MEMORY_TOL["float64"])
    return note


def trial_driver(w: World, rng: np.random.Generator, n: int) -> str:
    """SIGKILL the whole ``ntkscale gram`` (even) or ``run`` (odd) at a random time, then rerun."""
    if n % 2 == 0:
        cfg, store = w.gram_config(f"driver{n}", cluster=dict(CLUSTER))
        args, ref = ("gram", str(cfg)), w.gram()["ref"]
    else:
        R = w.run("cg")
        cfg = write_config(R["dir"], run_config(R["data"], store=f"driver{n}.zarr", solver=R["solver"]),
                           f"driver{n}.yaml")
        store, args, ref = R["dir"] / f"driver{n}.zarr", ("run", str(cfg), "--json"), R["ref"]
    proc = start_cli(*args, cwd=cfg.parent, env={**ENV1, FAULT_DELAY_ENV: "0.2"}, log=store.with_suffix(".log"))
    try:
        poll(lambda: status_json(store), proc, timeout=90)
        delay = float(rng.uniform(0.0, 2.5))
        time.sleep(delay)
    finally:
        kill_group(proc)
    from ntkscale.store.gram_store import GramStore

    before = GramStore.open(store).manifest.records() if GramStore.is_store(store) else {}
    r = cli(*args, cwd=cfg.parent, env=ENV1, timeout=300)
    check(r.returncode == 0, f"rerun failed (kill at {delay:.2f} s): {r.stderr[-1500:]}")
    after = GramStore.open(store).manifest.records()
    changed = [k for k, v in before.items() if after.get(k) != v]
    check(not changed, f"rerun recomputed finished blocks {changed}")
    same_arrays(store, ref)
    if n % 2 == 1:
        out, want = solve_out(store), w.run("cg")["out"]
        check(np.array_equal(out["labels"], want["labels"]), "predicted labels differ from the uninterrupted run")
    return f"killed at {delay:.2f} s after the store appeared, {len(before)} blocks kept"


SLOW_SOLVE = """
import sys, time
kind = sys.argv[2]
if kind == "cg":
    from ntkscale.solvers import operator as o
    orig = o.GramOperator._matmat
    def slow(self, x):
        time.sleep(0.03)
        return orig(self, x)
    o.GramOperator._matmat = slow
else:
    from ntkscale.solvers import cholesky as c
    orig = c._tile_task
    def slow(*a):
        time.sleep(0.15)
        return orig(*a)
    c._tile_task = slow
from ntkscale.cli.main import main
sys.exit(main(["run", sys.argv[1], "--json"]))
"""


def _cg_seq(store: Path) -> int:
    best = -1
    for slot in "ab":
        with contextlib.suppress(OSError, ValueError):
            attrs = json.loads((store / "solver" / "cg_checkpoint" / slot / "zarr.json").read_text()).get("attributes", {})
            if attrs.get("complete"):
                best = max(best, int(attrs.get("seq", -1)))
    return best


def _tiles_done(store: Path) -> int:
    import zarr

    total = 0                                   # solver/cholesky/cholesky-<ridge>/done, one per ridge
    for done in (store / "solver" / "cholesky").rglob("done"):
        if (done / "zarr.json").exists():
            total += int(np.asarray(zarr.open_array(str(done), mode="r")[...]).sum())
    return total


def _solver_kill(w: World, rng: np.random.Generator, n: int, method: str) -> str:
    R = w.run(method)
    cfg = write_config(R["dir"], run_config(R["data"], store=f"{method}{n}.zarr", solver=R["solver"]),
                       f"{method}{n}.yaml")
    store = R["dir"] / f"{method}{n}.zarr"
    target = int(rng.integers(1, 6)) if method == "cg" else int(rng.integers(1, 12))
    env = dict(os.environ, **ENV1)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SOLVE, str(cfg), method], cwd=R["dir"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        probe = (lambda: _cg_seq(store) >= target) if method == "cg" else (lambda: _tiles_done(store) >= target)
        hit = poll(probe, proc, timeout=120)
    finally:
        kill_group(proc)
    check(hit, f"the solve ended before {target} {'checkpoints' if method == 'cg' else 'tiles'} "
               f"(rc {proc.returncode}): {proc.stderr.read().decode(errors='replace')[-1500:]}")
    r = cli("run", str(cfg), "--json", cwd=R["dir"], env=ENV1, timeout=300)
    check(r.returncode == 0, f"rerun failed: {r.stderr[-1500:]}")
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    same_arrays(store, R["ref"])
    out = solve_out(store)
    check(np.array_equal(out["labels"], R["out"]["labels"]), "predicted labels differ from the uninterrupted run")
    rel = float(np.max(np.abs(out["alpha"] - R["out"]["alpha"])) / np.max(np.abs(R["out"]["alpha"])))
    check(rel <= (1e-6 if method == "cg" else 1e-12), f"alpha differs from the uninterrupted run: rel {rel:.3g}")
    resumed = rec.get("solve", {}).get("cg_resumed_from") if method == "cg" else \
        rec.get("solve", {}).get("cholesky_tiles_computed")
    return f"killed at {target} {'checkpoints' if method == 'cg' else 'tiles'}; alpha rel diff {rel:.2g}; " \
           f"{'resumed from iteration' if method == 'cg' else 'tiles computed on rerun'} {resumed}"


def trial_cg(w: World, rng: np.random.Generator, n: int) -> str:
    """SIGKILL ``ntkscale run`` (CG) after a random number of checkpoints, rerun."""
    return _solver_kill(w, rng, n, "cg")


def trial_cholesky(w: World, rng: np.random.Generator, n: int) -> str:
    """SIGKILL ``ntkscale run`` (tiled Cholesky) after a random number of tiles, rerun."""
    return _solver_kill(w, rng, n, "cholesky")


def _chunks(store: Path, part: str) -> List[Path]:
    return sorted(p for p in (store / part).rglob("*") if p.is_file() and "/c/" in str(p.relative_to(store)) + "/"
                  and p.relative_to(store).parts[-1] != "zarr.json" and "c" in p.relative_to(store).parts)


def _damage(path: Path, rng: np.random.Generator) -> str:
    how = ["truncate", "alter", "delete"][int(rng.integers(3))]
    if how == "delete":
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(max(1, path.stat().st_size // 3))
    else:
        data = bytearray(path.read_bytes())
        at = int(rng.integers(0, max(1, len(data) - 4)))
        for i in range(at, min(at + 4, len(data))):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    return how


def trial_corrupt(w: World, rng: np.random.Generator, n: int) -> str:
    """Damage one train / test / diagonal chunk or manifest entry; verify finds it, --repair restores it."""
    from ntkscale.cli.main import main

    g = w.gram()
    store = g["dir"] / f"corrupt{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(g["dir"] / "ref.zarr", store)
    what = ["train", "test", "diag", "manifest"][n % 4]
    if what == "manifest":
        entries = sorted(p for p in (store / "manifest").iterdir() if p.is_dir() and not p.name.startswith("inputs"))
        victim = entries[int(rng.integers(len(entries)))]
        how = ["delete", "checksum", "garble", "retype"][int(rng.integers(4))]
        meta = victim / "zarr.json"
        if how == "delete":                          # the entry is lost
            shutil.rmtree(victim)
        elif how == "garble":                        # its JSON cut short (a torn write)
            meta.write_bytes(meta.read_bytes()[: max(1, meta.stat().st_size // 2)])
        else:
            doc = json.loads(meta.read_text())
            attrs = doc.get("attributes", doc)
            sums = attrs.get("checksums")
            if how == "checksum" and isinstance(sums, dict) and sums:   # one checksum flipped
                k = sorted(sums)[int(rng.integers(len(sums)))]
                sums[k] = ("0" if str(sums[k])[:1] != "0" else "1") + str(sums[k])[1:]
            else:                                    # the field replaced by a value of another type
                how = "retype"
                attrs["checksums"] = "0" * 16
            meta.write_text(json.dumps(doc))
        block = victim.name
    else:
        part = {"train": "gram/train", "test": "gram/test", "diag": "diag"}[what]
        files = _chunks(store, part)
        victim = files[int(rng.integers(len(files)))]
        how = _damage(victim, rng)
        block = str(victim.relative_to(store))
    try:
        rc, rep = verify_json(store)
    except Exception as exc:  # noqa: BLE001 - a crash of verify is the finding
        raise Fail(f"verify raised {type(exc).__name__}: {exc} after {how} of {block} (manifest entry / chunk); "
                   f"{traceback.format_exc().strip().splitlines()[-3].strip()}") from exc
    check(rc == 1, f"verify returned {rc} after {how} of {block}: {rep}")
    named = list(rep.get("bad", {})) + list(rep.get("missing", []))
    check(named, f"verify named no block after {how} of {block}: {rep}")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["verify", str(store), "--repair", "--workers", "1"])
    check(rc == 0, f"verify --repair returned {rc} after {how} of {block}: {err.getvalue()[-1500:]}")
    rc, rep2 = verify_json(store)
    check(rc == 0, f"store not clean after repair of {how} {block}: {rep2}")
    same_arrays(store, g["ref"])
    shutil.rmtree(store, ignore_errors=True)
    return f"{how} {block}: verify named {named}, repaired bit-identical"


def trial_repair(w: World, rng: np.random.Generator, n: int) -> str:
    """SIGKILL ``verify --repair`` at a random time (3 chunks lost), rerun it."""
    g = w.gram()
    store = g["dir"] / f"repair{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(g["dir"] / "ref.zarr", store)
    files = _chunks(store, "gram/train")
    for i in rng.choice(len(files), size=3, replace=False):
        files[int(i)].unlink()
    proc = start_cli("verify", str(store), "--repair", "--workers", "1", cwd=g["dir"],
                     env={**ENV1, FAULT_DELAY_ENV: "0.5"}, log=store.with_suffix(".log"))
    delay = float(rng.uniform(0.5, 5.0))
    try:
        time.sleep(delay)
        rc0 = proc.poll()
    finally:
        kill_group(proc)
    r = cli("verify", str(store), "--repair", "--workers", "1", cwd=g["dir"], env=ENV1, timeout=240)
    check(r.returncode == 0, f"second repair failed (kill at {delay:.2f} s): {r.stdout[-800:]}{r.stderr[-800:]}")
    rc, rep = verify_json(store)
    check(rc == 0, f"not clean after the second repair: {rep}")
    same_arrays(store, g["ref"])
    return f"killed at {delay:.2f} s ({'already finished' if rc0 is not None else 'mid-repair'}); rerun repaired"


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    return filler


def trial_diskfull(w: World, rng: np.random.Generator, n: int) -> str:
    """Fill a 4 MiB tmpfs under a running ``ntkscale gram``: one-line ENOSPC error, exit 2; rerun after freeing."""
    g = w.gram()
    disk = g["dir"] / f"disk{n}"
    disk.mkdir(exist_ok=True)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(disk)], capture_output=True, text=True)
    if m.returncode != 0:
        raise Skip(f"cannot mount a tmpfs: {m.stderr.strip() or m.returncode}")
    try:
        cfg = write_config(g["dir"], config_dict(g["data"], store=str(disk / "run.zarr"), cluster=dict(CLUSTER)),
                           f"disk{n}.yaml")
        log = g["dir"] / f"disk{n}.log"
        after = int(rng.integers(1, 5))
        proc = start_cli("gram", str(cfg), cwd=g["dir"], env={**ENV1, FAULT_DELAY_ENV: "0.3"}, log=log)
        try:
            man = disk / "run.zarr" / "manifest"
            hit = poll(lambda: man.exists() and sum(not k.startswith("inputs") for k in os.listdir(man)) >= after,
                       proc, timeout=90)
            check(hit, f"run ended before {after} blocks: {log.read_text()[-1000:]}")
            filler = _fill(disk)
            rc = proc.wait(timeout=90)
        finally:
            kill_group(proc)
        out = log.read_text()
        check(rc == 2, f"exit {rc} on a full disk (expected 2): {out[-1500:]}")
        check("Traceback" not in out and "ENOSPC" in out, f"no one-line ENOSPC error: {out[-1500:]}")
        filler.unlink()
        r = cli("gram", str(cfg), cwd=g["dir"], env=ENV1, timeout=240)
        check(r.returncode == 0, f"rerun after freeing space failed: {r.stderr[-1500:]}")
        same_arrays(disk / "run.zarr", g["ref"])
        return f"disk filled after {after} blocks: exit 2, ENOSPC; resumed bit-identical"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def trial_concurrent(w: World, rng: np.random.Generator, n: int) -> str:
    """Two ``ntkscale gram`` on one store, the second started 0-1.5 s later: one wins, one is refused."""
    cfg, store = w.gram_config(f"conc{n}", cluster=dict(CLUSTER))
    logs = [store.with_suffix(f".{i}.log") for i in range(2)]
    offset = float(rng.uniform(0.0, 1.5))
    env = {**ENV1, FAULT_DELAY_ENV: "0.3"}
    procs = [start_cli("gram", str(cfg), cwd=cfg.parent, env=env, log=logs[0])]
    try:
        time.sleep(offset)
        procs.append(start_cli("gram", str(cfg), cwd=cfg.parent, env=env, log=logs[1]))
        rcs = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    outs = [lg.read_text() for lg in logs]
    check(sorted(rcs) == [0, 2], f"exit codes {rcs} (expected one 0, one 2): {outs[0][-600:]} | {outs[1][-600:]}")
    loser = outs[rcs.index(2)]
    check("in use by pid" in loser and "Traceback" not in loser, f"refusal unclear: {loser[-1000:]}")
    same_arrays(store, w.gram()["ref"])
    return f"second started {offset:.2f} s later; run {rcs.index(0)} won, the other refused"


class Skip(Exception):
    """The kind cannot run here (the message says why)."""


TRIALS: Dict[str, Callable[[World, np.random.Generator, int], str]] = {
    "worker": trial_worker, "driver": trial_driver, "cg": trial_cg, "cholesky": trial_cholesky,
    "repair": trial_repair, "corrupt": trial_corrupt, "diskfull": trial_diskfull, "concurrent": trial_concurrent}


# --------------------------------------------------------------------------- driver


def repro(seed: int, kind: str, trial: int) -> str:
    return f"python -m benchmarks.soak --seed {seed} --only {kind} --trial {trial}"


def run_soak(seed: int, budget: float, only: List[str], trial: Optional[int] = None,
             workdir: Optional[Path] = None) -> Dict[str, Any]:
    from tests.support.fuzz_configs import run_fuzz

    t0 = time.monotonic()
    results: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ntkscale-soak-", dir=workdir))
    world = World(tmp)
    try:
        if "fuzz" in only:
            n_fuzz = MIN_TRIALS["fuzz"] if trial is None else trial + 1
            results += run_fuzz(seed, n_fuzz, tmp / "fuzz", only_trial=trial)
        kinds = [k for k in KIND_ORDER if k in only and k != "fuzz"]
        counts = {k: 0 for k in kinds}
        spent: Dict[str, float] = {k: 0.0 for k in kinds}
        order = [(k, trial) for k in kinds] if trial is not None else None
        while True:
            if order is not None:
                if not order:
                    break
                kind, n = order.pop(0)
            else:
                # the kind furthest below its minimum goes next; past all minimums, round-robin
                todo = [k for k in kinds if k not in skipped]
                if not todo:
                    break
                kind = min(todo, key=lambda k: (counts[k] / MIN_TRIALS[k], KIND_ORDER.index(k)))
                n = counts[kind]
                est = spent[kind] / counts[kind] if counts[kind] else 5.0
                if time.monotonic() - t0 + est > budget:
                    break
            rng = np.random.default_rng([seed, KIND_ORDER.index(kind), n])
            s = time.monotonic()
            rec: Dict[str, Any] = {"kind": kind, "trial": n}
            try:
                rec.update(ok=True, detail=TRIALS[kind](world, rng, n))
            except Skip as exc:
                skipped[kind] = str(exc)
                continue
            except Fail as exc:
                rec.update(ok=False, detail=str(exc))
            except BaseException as exc:  # noqa: BLE001 - an unexpected error is a failed trial, shown in full
                if isinstance(exc, KeyboardInterrupt):
                    raise
                rec.update(ok=False, detail=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}")
            rec["seconds"] = round(time.monotonic() - s, 2)
            counts[kind] = counts.get(kind, 0) + 1
            spent[kind] = spent.get(kind, 0.0) + rec["seconds"]
            results.append(rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = []
    for kind in KIND_ORDER:
        rs = [r for r in results if r["kind"] == kind]
        if rs or kind in skipped:
            table.append({"kind": kind, "trials": len(rs), "passed": sum(r["ok"] for r in rs),
                          "failed": sum(not r["ok"] for r in rs), "minimum": MIN_TRIALS[kind],
                          "skipped": skipped.get(kind)})
    failures = [dict(r, repro=repro(seed, r["kind"], r["trial"])) for r in results if not r["ok"]]
    return {"seed": seed, "budget": budget, "seconds": round(time.monotonic() - t0, 1), "table": table,
            "failures": failures, "trials": results}


def format_table(report: Dict[str, Any]) -> str:
    lines = ["| kind | trials | passed | failed | minimum |", "|---|---:|---:|---:|---:|"]
    for row in report["table"]:
        extra = f" (skipped: {row['skipped']})" if row["skipped"] else ""
        lines.append(f"| {row['kind']}{extra} | {row['trials']} | {row['passed']} | {row['failed']} | {row['minimum']} |")
    tot = [sum(r[k] for r in report["table"]) for k in ("trials", "passed", "failed")]
    lines.append(f"| **all** | {tot[0]} | {tot[1]} | {tot[2]} | |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600.0, help="seconds; no trial starts past it")
    p.add_argument("--only", default=",".join(KIND_ORDER), help="comma-separated kinds: " + ",".join(KIND_ORDER))
    p.add_argument("--trial", type=int, default=None, help="rerun only trial N of each kind in --only")
    p.add_argument("--json", type=Path, default=None, help="write the table, failures and trials here")
    a = p.parse_args(argv)
    only = [k.strip() for k in a.only.split(",") if k.strip()]
    bad = [k for k in only if k not in KIND_ORDER]
    if bad:
        p.error(f"unknown kinds {bad}; choose from {KIND_ORDER}")
    report = run_soak(a.seed, a.budget, only, a.trial)
    print(format_table(report))
    for f in report["failures"]:
        print(f"\nFAILED {f['kind']} trial {f['trial']}: {f['detail']}\n  reproduce: {f['repro']}")
    print(f"\n{report['seconds']} s, seed {a.seed}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
