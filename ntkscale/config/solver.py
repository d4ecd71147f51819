"""The ``solver:`` and ``task:`` sections of a run configuration, typed and frozen.

```yaml
solver:
  method: auto                 # auto | cg | cholesky (auto: ntkscale/solvers/choose.py)
  ridge: 1e-6                  # a number, or a list: chosen on a validation split
  ridge_relative: true         # ridge in units of the train Gram's mean diagonal
  tol: 1e-6                    # CG relative residual
  maxiter: 2000                # CG iterations at most (default 10 n)
  preconditioner: {kind: nystrom, rank: 500}   # nystrom | pivoted_cholesky | none
  ridge_path: auto             # CG with a ridge list: auto | multishift | sequential | batched
  validation_fraction: 0.1     # of the training rows, for a ridge list
  seed: 0                      # validation split and randomized preconditioner
  checkpoint_every: 10         # CG iterations between checkpoints in the store
  tile: 2048                   # Cholesky tile (default: planned from memory)
  mode: stored                 # operator: stored | streamed | auto
  products: auto               # where Gram products run: driver | cluster | auto
  learning_rate: 1.0           # η of `ntkscale predict --time` (neural-tangents' convention)
task: auto                     # auto | classification | regression
```

Validated once, at the edge, with the same rules as the rest of
:mod:`ntkscale.config.sections`: an unknown key names itself and the closest known key,
and a negative ridge is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from ..choices import METHODS, MODES, PRECONDITIONERS, PRODUCTS, RIDGE_PATHS, TASKS
from ..errors import ConfigError
from .sections import Section

SOLVER_KEYS = ("method", "ridge", "ridge_relative", "tol", "maxiter", "preconditioner", "ridge_path",
               "validation_fraction", "seed", "checkpoint_every", "tile", "mode", "products", "learning_rate")


@dataclasses.dataclass(frozen=True)
class PreconditionerConfig:
    kind: str = "nystrom"
    rank: int = 500


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """The validated ``solver:`` section (defaults: the demo's settings)."""

    method: str = "auto"
    ridge: Tuple[float, ...] = (1e-6,)
    ridge_list: bool = False            # a list was given: select on validation
    ridge_relative: bool = True
    tol: float = 1e-6
    maxiter: Optional[int] = None
    preconditioner: PreconditionerConfig = PreconditionerConfig()
    ridge_path: str = "auto"
    validation_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 10
    tile: Optional[int] = None
    mode: str = "stored"
    products: str = "auto"
    #: gradient-descent learning rate η of the training dynamics (``ntkscale predict --time``):
    #: the flow is ``exp(-η t K / N)``, N = y_train.size (neural-tangents' convention)
    learning_rate: float = 1.0

    def on_cluster(self, cluster_kind: str) -> bool:
        """Run the products on the Dask cluster (``products``; auto: a non-local cluster)."""
        return self.products == "cluster" or (self.products == "auto" and cluster_kind != "local")

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ridge"] = list(self.ridge) if self.ridge_list else self.ridge[0]
        out.pop("ridge_list")
        if out["learning_rate"] == 1.0:   # the default: solves recorded before the key keep their identity
            out.pop("learning_rate")
        return out


def _number(sec: Section, key: str, default: float, *, positive: bool = False) -> float:
    value = sec.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)        # YAML reads 1e-6 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise sec.error(f"must be a number, got {value!r}", key)
    if positive and value <= 0:
        raise sec.error(f"must be > 0, got {value!r}", key)
    return float(value)


def _ridges(sec: Section) -> Tuple[Tuple[float, ...], bool]:
    value = sec.get("ridge", 1e-6)
    is_list = isinstance(value, (list, tuple))
    values = list(value) if is_list else [value]
    if not values:
        raise sec.error("must be a number or a non-empty list of numbers", "ridge")
    out = []
    for v in values:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise sec.error(f"must be a number or a list of numbers, got {value!r}", "ridge")
        if v < 0:
            raise sec.error(f"must be >= 0 (it is added to the Gram's diagonal; a negative ridge makes "
                            f"K + ridge I indefinite), got {v!r}; use e.g. 1e-6 (relative to the mean diagonal)",
                            "ridge")
        out.append(float(v))
    if is_list and len(set(out)) != len(out):
        raise sec.error(f"has repeated values {values!r}", "ridge")
    return tuple(out), is_list


def parse_solver(mapping: Any, source: str = "<dict>") -> Optional[SolverConfig]:
    """Validate a raw ``solver:`` mapping (None stays None: the defaults apply)."""
    if mapping is None:
        return None
    sec = Section(mapping, "solver", source)
    sec.check_keys(SOLVER_KEYS)
    ridge, is_list = _ridges(sec)
    pre = sec.get("preconditioner", None)
    if pre is None or isinstance(pre, str):
        psec = Section({"kind": pre or "nystrom"}, "solver.preconditioner", source)
    else:
        psec = Section(pre, "solver.preconditioner", source)
    psec.check_keys(("kind", "rank"))
    precond = PreconditionerConfig(kind=psec.choice("kind", PRECONDITIONERS, "nystrom"),
                                   rank=psec.int("rank", 500))
    fraction = _number(sec, "validation_fraction", 0.1)
    if not 0.0 < fraction < 1.0:
        raise sec.error(f"must be between 0 and 1 (exclusive), got {fraction!r}", "validation_fraction")
    seed = sec.int("seed", 0, minimum=0)
    return SolverConfig(
        method=sec.choice("method", METHODS, "auto"), ridge=ridge, ridge_list=is_list,
        ridge_relative=sec.boolean("ridge_relative", True), tol=_number(sec, "tol", 1e-6, positive=True),
        maxiter=sec.int("maxiter"), preconditioner=precond, ridge_path=sec.choice("ridge_path", RIDGE_PATHS, "auto"),
        validation_fraction=fraction, seed=int(seed), checkpoint_every=sec.int("checkpoint_every", 10),
        tile=sec.int("tile"), mode=sec.choice("mode", MODES, "stored"),
        products=sec.choice("products", PRODUCTS, "auto"),
        learning_rate=_number(sec, "learning_rate", 1.0, positive=True),
    )


def parse_task(value: Any, source: str = "<dict>") -> Optional[str]:
    """``task: auto|classification|regression`` (also ``{kind: ...}``)."""
    if value is None:
        return None
    if isinstance(value, dict) or hasattr(value, "keys"):
        sec = Section(value, "task", source)
        sec.check_keys(("kind",))
        return sec.choice("kind", TASKS, "auto")
    if value not in TASKS:
        raise ConfigError(f"{source}: task: must be one of {', '.join(TASKS)}, got {value!r}")
    return str(value)
