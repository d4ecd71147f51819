"""The ``cluster: {kind: kubernetes, ...}`` section: a DaskCluster made by the Dask operator.

Parsed and validated here (every error names its key; memory sizes become exact
Kubernetes quantities); the ``DaskCluster`` resource and the ``KubeCluster`` are
made from these options by :mod:`ntkscale.cluster.kubernetes`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Optional, Tuple

from .sections import Section, parse_memory

KUBERNETES_KEYS = ("kind", "image", "namespace", "name", "n_workers", "gpus_per_worker", "memory",
                   "cpu", "threads_per_worker", "scheduler_memory", "scheduler_cpu",
                   "store_claim", "store_mount", "env", "node_selector", "tolerations",
                   "image_pull_policy", "idle_timeout", "port_forward", "run_as_user",
                   "resource_timeout")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclasses.dataclass(frozen=True)
class KubernetesOptions:
    """``cluster: {kind: kubernetes, ...}``: a DaskCluster made by the Dask operator."""

    image: str
    kind: str = "kubernetes"
    namespace: Optional[str] = None        # None: the current context's namespace
    name: str = "ntkscale"
    n_workers: int = 1
    gpus_per_worker: int = 0               # 0 or 1: one worker per GPU
    memory: str = "8Gi"                    # per worker (Kubernetes quantity)
    cpu: str = "2"                         # per worker (Kubernetes quantity)
    threads_per_worker: int = 1
    scheduler_memory: str = "2Gi"
    scheduler_cpu: str = "1"
    store_claim: Optional[str] = None      # a ReadWriteMany PersistentVolumeClaim
    store_mount: str = "/data"
    env: Tuple[Tuple[str, str], ...] = ()
    node_selector: Tuple[Tuple[str, str], ...] = ()
    tolerations: Optional[Tuple[Any, ...]] = None   # None: tolerate nvidia.com/gpu on GPU workers
    image_pull_policy: Optional[str] = None
    idle_timeout: int = 0
    port_forward: Optional[bool] = None    # port-forward the scheduler (driver outside the cluster)
    run_as_user: int = 1000
    resource_timeout: Optional[int] = None

    @property
    def slots(self) -> int:
        return self.n_workers * self.threads_per_worker


def k8s_quantity(nbytes: int) -> str:
    """Bytes -> the shortest exact Kubernetes quantity ('32Gi', '1500M', '123')."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10),
                           ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return str(nbytes)


def _cpu(sec: Section, key: str, default: str) -> str:
    value = sec.get(key, default)
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0
                                       or isinstance(value, str) and _CPU.match(value)):
        raise sec.error(f"must be a CPU count such as 2, 0.5 or '500m', got {value!r}", key)
    text = str(value)
    if text in ("0", "0m") or float(text.rstrip("m") or 0) == 0:
        raise sec.error(f"must be positive, got {value!r}", key)
    return text


def _cpu_count(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def parse_kubernetes_options(options: Any, *, where: str = "cluster",
                             source: str = "<config>") -> KubernetesOptions:
    """Validate ``cluster: {kind: kubernetes, ...}`` (a mapping or a :class:`Section`);
    every error names its key."""
    sec = Section.of(options, where, source)
    sec.check_keys(KUBERNETES_KEYS)
    if sec.get("kind", "kubernetes") != "kubernetes":
        raise sec.error(f"must be 'kubernetes' here, got {sec.get('kind')!r}", "kind")
    image = sec.string("image", required=True)
    name = sec.string("name", "ntkscale")
    if not _DNS_LABEL.match(name) or len(name) > 53:  # the operator's limit
        raise sec.error(f"must be a lower-case DNS label of at most 53 characters "
                        f"(letters, digits, '-'), got {name!r}", "name")
    namespace = sec.string("namespace")
    if namespace is not None and (not _DNS_LABEL.match(namespace) or len(namespace) > 63):
        raise sec.error(f"must be a lower-case DNS label, got {namespace!r}", "namespace")
    gpus = sec.int("gpus_per_worker", 0, minimum=0)
    if gpus > 1:
        raise sec.error(f"one worker per GPU: use gpus_per_worker: 1 and n_workers for more "
                        f"GPUs, got {gpus}", "gpus_per_worker")
    cpu = _cpu(sec, "cpu", "2")
    threads = sec.int("threads_per_worker", 1 if gpus else max(1, math.floor(_cpu_count(cpu))))
    claim = sec.string("store_claim")
    if claim is not None and (not _DNS_SUBDOMAIN.match(claim) or len(claim) > 253):
        raise sec.error(f"must be the name of a PersistentVolumeClaim, got {claim!r}", "store_claim")
    mount = sec.string("store_mount", "/data")
    if not mount.startswith("/") or mount in ("/", "/tmp"):
        raise sec.error(f"must be an absolute path other than / and /tmp, got {mount!r}",
                        "store_mount")
    tolerations = sec.get("tolerations")
    if tolerations is not None and (not isinstance(tolerations, (list, tuple)) or not all(
            isinstance(t, Mapping) for t in tolerations)):
        raise sec.error(f"must be a list of Kubernetes tolerations (mappings), got {tolerations!r}",
                        "tolerations")
    port_forward = sec.get("port_forward")
    if port_forward is not None:
        port_forward = sec.boolean("port_forward", False)
    policy = sec.get("image_pull_policy")
    if policy is not None and policy not in PULL_POLICIES:
        raise sec.error(f"must be one of {', '.join(PULL_POLICIES)}, got {policy!r}",
                        "image_pull_policy")
    memory = k8s_quantity(parse_memory(sec.get("memory", "8GiB"),
                                       lambda msg: sec.error(msg, "memory")))
    sched_memory = k8s_quantity(parse_memory(sec.get("scheduler_memory", "2GiB"),
                                             lambda msg: sec.error(msg, "scheduler_memory")))
    return KubernetesOptions(
        image=image, namespace=namespace, name=name, n_workers=sec.int("n_workers", 1),
        gpus_per_worker=gpus, memory=memory, cpu=cpu, threads_per_worker=threads,
        scheduler_memory=sched_memory, scheduler_cpu=_cpu(sec, "scheduler_cpu", "1"),
        store_claim=claim, store_mount=mount, env=sec.string_map("env"),
        node_selector=sec.string_map("node_selector"),
        tolerations=None if tolerations is None else tuple(dict(t) for t in tolerations),
        image_pull_policy=policy, idle_timeout=sec.int("idle_timeout", 0, minimum=0),
        port_forward=port_forward, run_as_user=sec.int("run_as_user", 1000),
        resource_timeout=sec.int("resource_timeout"),
    )
