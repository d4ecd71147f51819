"""An installed ntkscale leaves its install tree alone (issue 15, item 1).

numba's ``cache=True`` used to write ``.nbi``/``.nbc`` files into
``site-packages/ntkscale/stax/engine/__pycache__``; ``pip uninstall`` leaves them, and
the leftover folder then shadows an editable install as an empty namespace package
(``cannot import name '__version__' from 'ntkscale' (unknown location)``).
``ntkscale/__init__.py`` now points ``NUMBA_CACHE_DIR`` at a per-user cache directory
before numba is imported. These tests copy the package into a scratch "site-packages",
run a compiled kernel there in a fresh interpreter, and look where the cache files went.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import ntkscale
from tests.support.paths import ROOT

KERNEL = """
    import json, os
    import numpy as np
    from ntkscale import stax
    _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1, W_std=1.5))
    x = np.random.default_rng(0).normal(size=(6, 5))
    k = kernel_fn(x, x, get="ntk")
    print(json.dumps({"path": kernel_fn.explain(x.shape).path, "cache": os.environ.get("NUMBA_CACHE_DIR"),
                      "trace": float(np.trace(k))}))
"""


def _site(tmp_path: Path) -> Path:
    """A copy of the package, without any ``__pycache__``, as pip would install it."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "ntkscale", site / "ntkscale", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(site: Path, code: str, env: Dict[str, str]) -> Dict:
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=site.parent, capture_output=True,
                         text=True, timeout=300, env={**base, "PYTHONPATH": str(site), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _numba_files(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_numba_cache_goes_to_the_user_cache_dir_not_the_package(tmp_path: Path) -> None:
    site = _site(tmp_path)
    xdg = tmp_path / "xdg-cache"
    out = _run(site, KERNEL, {"XDG_CACHE_HOME": str(xdg)})
    assert out["path"] == "cpu_flat"          # a numba kernel with cache=True really ran
    expected = xdg / "ntkscale" / "numba" / ntkscale.__version__
    assert _numba_files(site) == [], "numba wrote its cache into the install tree"
    assert out["cache"] == str(expected)
    cached = _numba_files(expected)
    assert any(p.suffix == ".nbi" for p in cached) and any(p.suffix == ".nbc" for p in cached), cached
    # A second interpreter loads the cached kernel and gives the same numbers, still writing nothing there.
    again = _run(site, KERNEL, {"XDG_CACHE_HOME": str(xdg)})
    assert again["trace"] == out["trace"]
    assert _numba_files(site) == []


def test_a_numba_cache_dir_the_user_set_is_kept(tmp_path: Path) -> None:
    site = _site(tmp_path)
    mine = tmp_path / "my-numba-cache"
    code = "import os, json, ntkscale; print(json.dumps({'cache': os.environ['NUMBA_CACHE_DIR']}))"
    assert _run(site, code, {"NUMBA_CACHE_DIR": str(mine), "XDG_CACHE_HOME": str(tmp_path / "x")})["cache"] == str(mine)


def test_numba_imported_first_still_gets_the_user_cache_dir(tmp_path: Path) -> None:
    site = _site(tmp_path)
    code = ("import json, numba, numba.core.config as c, ntkscale; "
            "print(json.dumps({'cache': c.CACHE_DIR}))")
    xdg = tmp_path / "xdg"
    assert _run(site, code, {"XDG_CACHE_HOME": str(xdg)})["cache"] == str(xdg / "ntkscale" / "numba" /
                                                                         ntkscale.__version__)


def test_unwritable_cache_home_falls_back_to_a_temp_dir(tmp_path: Path) -> None:
    site = _site(tmp_path)
    code = "import os, json, tempfile, ntkscale; print(json.dumps({'cache': os.environ['NUMBA_CACHE_DIR'], " \
           "'tmp': tempfile.gettempdir()}))"
    out = _run(site, code, {"XDG_CACHE_HOME": "/proc/ntkscale-not-writable"})
    assert out["cache"].startswith(out["tmp"] + os.sep) and out["cache"].endswith(
        os.path.join("numba", ntkscale.__version__))
