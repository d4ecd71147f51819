"""The fair-comparison protocol every kernel benchmark goes through (DESIGN principle 16).

One place decides what "ntkscale is k× faster than its peer" means:

* **Same work.** A :class:`Work` names the net, the input shape, ``n1`` and
  ``n2`` (``n2=None``: the symmetric call ``kernel_fn(x, None)``; otherwise a
  cross call on a second, different set), the dtype, ``get`` and the data
  seed. Both sides build their data from it with the same formula
  (:func:`make_inputs`) and report back what they actually computed (input
  shapes, dtype, output shape, a checksum of the inputs); any difference
  refuses the comparison (:class:`ProtocolError`).
* **Same machine share.** Both sides run as subprocesses started with the
  same pinned environment (:func:`pinned_env`: BLAS/OpenMP/numba threads,
  XLA's intra-op threads) and the same CPU affinity; both are recorded.
* **Checked before timed.** Each side saves its result once; the two are
  compared (max relative error against a declared tolerance) and a mismatch
  refuses to time.
* **Interleaved repeats.** Runs alternate ABBA between the sides, so drifting
  machine load hits both; the report is the median with min, max and the
  inter-quartile range, and baseline-subtracted peak RSS of each process.
* **Targets asserted.** A benchmark declares :class:`Target` s; its result
  file lists each with its value and whether it was met, and
  ``python -m benchmarks --check`` exits non-zero naming every missed one.

The sides speak a one-JSON-object-per-line protocol on stdin/stdout
(``benchmarks/side_server.py``); any program that speaks it can be a peer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
NT_VENV = Path(os.environ.get("NT_VENV", Path.home() / ".cache" / "ntkscale" / "nt-venv"))

#: Largest max-relative difference accepted between the sides, per dtype.
#: neural-tangents' diagonal (parallel pairs) is ~3e-8 off in float64 and ~1e-3
#: in float32 (shared NT-CONVENTIONS), so these are the tightest honest bounds.
TOLERANCE = {"float64": 1e-7, "float32": 2e-3}


class ProtocolError(RuntimeError):
    """The comparison would not be fair or its outputs are wrong: nothing is timed."""


@dataclasses.dataclass(frozen=True)
class Work:
    """One kernel evaluation both sides must perform identically."""

    net: str                      # fc | cntk | myrtle5 | myrtle7 | myrtle10 | spec (see ``spec``)
    depth: int
    shape: Tuple[int, ...]        # per-example input shape
    n1: int
    n2: Optional[int]             # None: symmetric kernel_fn(x1, None)
    dtype: str = "float64"
    get: str = "ntk"
    seed: int = 0
    spec: Optional[str] = None    # net "spec": ntkscale's canonical spec JSON, built on both sides

    @property
    def cross(self) -> bool:
        return self.n2 is not None

    @property
    def entries(self) -> int:
        return self.n1 * (self.n2 if self.n2 is not None else self.n1)

    def label(self) -> str:
        kind = f"cross {self.n1}×{self.n2}" if self.cross else f"symmetric {self.n1}"
        name = self.net if self.net.startswith("myrtle") or self.net == "spec" else f"{self.net}{self.depth}"
        return f"{name} {'×'.join(map(str, self.shape))} {kind} {self.dtype} {self.get}"

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Work":
        return cls(**{**d, "shape": tuple(d["shape"])})


def make_inputs(work: Work) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The inputs of ``work``: FC nets get standard normal vectors, image nets
    uniform [0, 1) images; the cross set is drawn after the first from the same
    generator, so x1 and x2 differ. Both sides call this exact function."""
    rng = np.random.default_rng(work.seed)
    draw = rng.standard_normal if work.net == "fc" else rng.uniform
    x1 = np.asarray(draw(size=(work.n1,) + tuple(work.shape))).astype(work.dtype)
    x2 = None if work.n2 is None else np.asarray(draw(size=(work.n2,) + tuple(work.shape))).astype(work.dtype)
    return x1, x2


def input_digest(x1: np.ndarray, x2: Optional[np.ndarray]) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x1).tobytes())
    if x2 is not None:
        h.update(np.ascontiguousarray(x2).tobytes())
    return h.hexdigest()[:16]


def build_net(stax: Any, work: Work) -> Any:
    """The kernel function of ``work.net`` from a ``stax`` module: ntkscale's and
    neural-tangents' take the same calls, so both sides build the net here.
    Nets and stds follow the shared NT-CONVENTIONS benchmark nets; ``spec`` nets
    are built layer by layer from ntkscale's canonical spec."""
    s2 = 2.0 ** 0.5
    layers: List[Any] = []
    if work.net == "spec":
        if not work.spec:
            raise ProtocolError("a 'spec' benchmark net needs Work.spec (the canonical spec JSON)")
        return build_from_spec(stax, json.loads(work.spec))[2]
    if work.net == "fc":
        for _ in range(work.depth):
            layers += [stax.Dense(512, W_std=s2, b_std=0.1), stax.Relu()]
        layers.append(stax.Dense(1, W_std=s2, b_std=0.1))
    elif work.net == "cntk":
        for _ in range(work.depth):
            layers += [stax.Conv(512, (3, 3), padding="SAME", W_std=s2, b_std=0.1), stax.Relu()]
        layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=s2, b_std=0.1)]
    elif work.net.startswith("myrtle"):
        stages = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[work.depth]
        block = [stax.Conv(512, (3, 3), padding="SAME", W_std=s2, b_std=0.0), stax.Relu()]
        pool = stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")
        final_pools = max(int(round(np.log2(work.shape[0]))) - 2, 0)
        layers = block * stages[0] + [pool] + block * stages[1] + [pool] + block * stages[2]
        layers += [pool] * final_pools + [stax.Flatten(), stax.Dense(1, W_std=s2, b_std=0.0)]
    else:
        raise ProtocolError(f"unknown benchmark net {work.net!r}")
    return stax.serial(*layers)[2]


#: Keyword arguments the canonical spec stores as lists and stax takes as tuples.
_TUPLE_KEYS = {"filter_shape", "strides", "window_shape", "axis", "s"}


def build_from_spec(stax: Any, spec: List[Any]) -> Any:
    """``stax.serial`` of a canonical spec (``[[name, kwargs], ...]``, branches nested
    under ``parallel``), with either library's ``stax``: the same calls on both sides."""
    layers = []
    for name, kwargs in spec:
        if name == "parallel":
            layers.append(stax.parallel(*[build_from_spec(stax, b) for b in kwargs["branches"]]))
            continue
        kw = {k: (tuple(v) if k in _TUPLE_KEYS and isinstance(v, list) else v) for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kw))
    return stax.serial(*layers)


# ----------------------------------------------------------------------------- machine share


def pinned_env(threads: int, cpus: Sequence[int], base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a side: every thread pool this machine's libraries use set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    xla = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "eigen" not in f and "intra_op" not in f)
    multi = "true" if threads > 1 else "false"
    env["XLA_FLAGS"] = f"{xla} --xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={threads}".strip()
    env["NTKSCALE_BENCH_CPUS"] = ",".join(map(str, cpus))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def default_cpus() -> List[int]:
    return sorted(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- sides


class Side:
    """One side of a comparison: a subprocess speaking the side protocol."""

    def __init__(self, name: str, command: Sequence[str], env: Dict[str, str], timeout: float = 3600):
        self.name, self.command, self.timeout = name, list(command), timeout
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=str(HERE.parent))

    def _read(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise ProtocolError(f"{self.name} side exited (rc {self.proc.wait()}): {err[-2000:]}")
            line = line.strip()
            if line.startswith("{"):
                reply = json.loads(line)
                if "error" in reply:
                    raise ProtocolError(f"{self.name} side: {reply['error']}")
                return reply

    def ask(self, **request: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(op="quit")
            except ProtocolError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()

    def __enter__(self) -> "Side":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def side_command(kind: str, python: Optional[str] = None) -> List[str]:
    """``ours`` (this interpreter) or ``nt`` (the neural-tangents venv's)."""
    if kind == "nt":
        py = python or str(NT_VENV / "bin" / "python")
        if not Path(py).exists():
            raise ProtocolError(f"neural-tangents venv not found at {NT_VENV}; build it with bash benchmarks/nt_venv.sh")
        return [py, str(HERE / "side_server.py"), "--side", "nt"]
    return [python or sys.executable, str(HERE / "side_server.py"), "--side", "ours"]


def sides_vs_nt(script: str) -> Optional[Dict[str, List[str]]]:
    """The two sides of a benchmark against neural-tangents (ntkscale's first), or None
    after saying on stderr why the peer cannot run (its venv is not built)."""
    try:
        return {"ntkscale": side_command("ours"), "neural-tangents": side_command("nt")}
    except ProtocolError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return None


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS mark (``VmHWM``) to its current size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux
        pass


SAME_WORK_KEYS = ("x1_shape", "x2_shape", "dtype", "out_shape", "get", "input_digest")


def check_same_work(a: Dict[str, Any], b: Dict[str, Any], names: Tuple[str, str]) -> None:
    """Both sides' setup replies must describe the same computation."""
    diff = [f"{k}: {a.get(k)} vs {b.get(k)}" for k in SAME_WORK_KEYS if a.get(k) != b.get(k)]
    if diff:
        raise ProtocolError(f"{names[0]} and {names[1]} do different work ({'; '.join(diff)}); not timing")


def check_equal(ours: np.ndarray, peer: np.ndarray, dtype: str, tolerance: Optional[float] = None) -> float:
    """Max relative difference (to the peer's largest entry); raises above the tolerance."""
    tol = TOLERANCE[dtype] if tolerance is None else tolerance
    if ours.shape != peer.shape:
        raise ProtocolError(f"outputs have different shapes {ours.shape} vs {peer.shape}; not timing")
    if not (np.isfinite(ours).all() and np.isfinite(peer).all()):
        raise ProtocolError("an output has non-finite entries; not timing")
    rel = float(np.max(np.abs(ours.astype(np.float64) - peer)) / max(np.max(np.abs(peer)), 1e-300))
    if not rel <= tol:
        raise ProtocolError(f"outputs differ: max rel {rel:.3g} > tolerance {tol:g} ({dtype}); not timing")
    return rel


def summary(times: Sequence[float]) -> Dict[str, float]:
    """Median with its spread (min, max, inter-quartile range)."""
    t = sorted(times)
    q = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else [t[0]] * 3
    return {"median": statistics.median(t), "min": t[0], "max": t[-1], "q1": q[0], "q3": q[2], "runs": len(t)}


def compare(work: Work, sides: Dict[str, List[str]], *, repeats: int, threads: int,
            cpus: Optional[Sequence[int]] = None, tolerance: Optional[float] = None,
            peer_work: Optional[Work] = None, scratch: Optional[Path] = None,
            extra_ops: Iterable[str] = ()) -> Dict[str, Any]:
    """Run ``work`` on two sides (``{"ours": cmd, "peer": cmd}``): check same work, check
    equal outputs, then time ``repeats`` interleaved ABBA rounds. ``peer_work`` exists for
    the protocol's own tests (a peer handed other work must be refused)."""
    import tempfile

    cpus = list(cpus or default_cpus())
    env = pinned_env(threads, cpus)
    names = list(sides)
    if len(names) != 2:
        raise ProtocolError("a comparison has exactly two sides")
    opened: Dict[str, Side] = {}
    try:
        for name in names:
            opened[name] = Side(name, sides[name], env)
        setups = {}
        for i, name in enumerate(names):
            w = peer_work if (peer_work is not None and i == 1) else work
            setups[name] = opened[name].ask(op="setup", work=w.to_json())
        check_same_work(setups[names[0]], setups[names[1]], (names[0], names[1]))
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            outs = {}
            for name in names:
                path = str(Path(tmp) / f"{name}.npy")
                opened[name].ask(op="save", path=path)
                outs[name] = np.load(path, allow_pickle=False)
        rel = check_equal(outs[names[0]], outs[names[1]], work.dtype, tolerance)
        times: Dict[str, List[float]] = {n: [] for n in names}
        peaks: Dict[str, List[float]] = {n: [] for n in names}
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                reply = opened[name].ask(op="run")
                times[name].append(reply["seconds"])
                peaks[name].append(reply["peak_rss_mib"])
        extras = {op: opened[names[0]].ask(op=op) for op in extra_ops}
    finally:
        for side in opened.values():
            side.close()
    a, b = (summary(times[n]) for n in names)
    return {
        "work": work.to_json(), "label": work.label(), "threads": threads, "cpus": cpus,
        "env": {k: env[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "XLA_FLAGS")},
        "max_rel_diff": rel, "tolerance": TOLERANCE[work.dtype] if tolerance is None else tolerance,
        "times": {n: summary(times[n]) for n in names}, "raw_times": times,
        "peak_rss_mib": {n: max(peaks[n]) for n in names},
        "setup": setups, "versions": {n: setups[n].get("versions") for n in names},
        "ratio": b["median"] / a["median"],
        # the ratio's spread: the worst and best pairing of the two sides' quartiles
        "ratio_iqr": [b["q1"] / a["q3"], b["q3"] / a["q1"]],
        "load_1min": os.getloadavg()[0], **extras,
    }


# ----------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Target:
    """A number a benchmark promises: ``value op goal`` (``>=`` or ``<=``)."""

    name: str
    goal: float
    op: str = ">="

    def judge(self, value: Optional[float]) -> Dict[str, Any]:
        if self.op not in (">=", "<="):
            raise ValueError(f"target op must be >= or <=, not {self.op!r}")
        met = value is not None and (value >= self.goal if self.op == ">=" else value <= self.goal)
        return {"name": self.name, "value": value, "op": self.op, "goal": self.goal, "met": bool(met)}


def missed_targets(results_dir: Path) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(all judged targets, the missed ones) from every result file under ``results_dir``
    except quick-mode runs (``suite-raw/quick``: smaller sizes than the targets are set for)."""
    judged: List[Dict[str, Any]] = []
    for path in sorted(results_dir.rglob("*.json")):
        if "quick" in path.relative_to(results_dir).parts:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("targets"), list):
            for t in data["targets"]:
                judged.append({**t, "file": str(path.relative_to(results_dir))})
    return judged, [t for t in judged if not t.get("met")]


def check_main(results_dir: Path) -> int:
    """``python -m benchmarks --check``: 0 when every recorded target is met, 1 otherwise."""
    judged, missed = missed_targets(results_dir)
    if not judged:
        print(f"no benchmark targets recorded under {results_dir}; run the benchmarks first", file=sys.stderr)
        return 2
    for t in judged:
        value = "not measured" if t["value"] is None else f"{t['value']:.4g}"
        print(f"{'met   ' if t['met'] else 'MISSED'} {t['name']}: {value} (target {t['op']} {t['goal']:g})"
              f"  [{t['file']}]")
    if missed:
        print(f"{len(missed)} of {len(judged)} targets missed: " + "; ".join(t["name"] for t in missed),
              file=sys.stderr)
        return 1
    print(f"all {len(judged)} targets met")
    return 0
