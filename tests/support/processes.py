"""Helpers for tests that drive real processes: start one (Python code or the
``ntkscale`` CLI), wait on it, find its workers, kill it with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import psutil
import pytest

from tests.support.paths import ROOT


def spawn(code: str) -> subprocess.Popen:
    """Run ``code`` (dedented) in a fresh Python with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


#: ``python -m ntkscale.cli.main`` would load cli/main.py twice (as __main__ and as ntkscale.cli.main).
CLI = [sys.executable, "-c", "import sys; from ntkscale.cli.main import main; sys.exit(main())"]


def cli(*args: str, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``ntkscale ARGS`` in a fresh interpreter and wait for it."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
              log: Optional[Path] = None) -> subprocess.Popen:
    """Start ``ntkscale ARGS`` in its own process group (so the test can kill the whole run)."""
    full_env = dict(os.environ, **(env or {}))
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by :func:`start_cli` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(pred: Callable[[], Any], proc: Optional[subprocess.Popen] = None, *, timeout: float = 90.0,
             every: float = 0.1, what: str = "condition") -> Any:
    """Poll ``pred`` every ``every`` seconds until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds, naming ``what``. With ``proc`` it
    also fails (with the child's stderr) as soon as that child exits, and kills
    it on timeout. An exception from ``pred`` counts as "not yet" (a store the
    child has only half created does not open); the last one is shown on timeout.
    """
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}) while waiting for {what}: "
                        f"{(err or b'').decode(errors='replace')[-2000:]}")
        try:
            value = pred()
        except Exception as exc:  # noqa: BLE001 - retried; reported on timeout
            value, last = None, exc
        if value:
            return value
        time.sleep(every)
    if proc is not None:
        proc.kill()
    pytest.fail(f"timed out after {timeout} s waiting for {what}"
                + (f" (last error: {type(last).__name__}: {last})" if last is not None else ""))


def worker_processes(*, parent: Optional[int] = None, contains: Sequence[str] = (),
                     excludes: Sequence[str] = ()) -> List[psutil.Process]:
    """Live processes whose command line contains every string of ``contains`` and
    none of ``excludes``: the descendants of ``parent``, or every process without one.

    Dask workers started by a ``LocalCluster`` are ``parent=pid, contains=("spawn_main",),
    excludes=("resource_tracker",)``; dask-jobqueue workers are
    ``contains=("dask_worker", scheduler_address)``.
    """
    if parent is None:
        candidates = list(psutil.process_iter())
    else:
        try:
            candidates = psutil.Process(parent).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
    found = []
    for p in candidates:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:  # exited or not ours to read
            continue
        if all(s in cmd for s in contains) and not any(s in cmd for s in excludes):
            found.append(p)
    return found
