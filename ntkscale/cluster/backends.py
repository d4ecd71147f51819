"""SLURM and Kubernetes clusters, and TLS, from the ``cluster:``/``tls:`` config sections.

Three small translators, each ``options mapping -> validated frozen options -> Dask object``:

``kind: slurm``       :func:`parse_slurm_options` -> :func:`slurm_cluster_kwargs` ->
                      :func:`make_slurm_cluster` (a ``dask_jobqueue.SLURMCluster`` scaled to
                      ``jobs`` jobs; the scheduler runs where the driver runs, e.g. a login node).
``kind: kubernetes``  :func:`parse_kubernetes_options` -> :func:`kubernetes_cluster_spec` (the
                      ``DaskCluster`` resource, built offline with dask-kubernetes'
                      ``make_cluster_spec`` and hardened) -> :func:`make_kubernetes_cluster`
                      (a ``dask_kubernetes.operator.KubeCluster`` that creates it).
``tls:``              :func:`parse_tls_options` -> :func:`security_from_tls` (a
                      ``distributed.security.Security``).

Validation happens here, once, with errors that name the key (``cluster.memory: ...``);
dask-jobqueue and dask-kubernetes are imported only when a cluster is made, so parsing
and the spec builder work without a SLURM or a Kubernetes cluster in reach.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ..config.run import Section, parse_memory
from ..errors import ConfigError

# ----------------------------------------------------------------------------- shared checks


def _section(options: Any, where: str, source: str) -> Section:
    if isinstance(options, Section):
        return options
    return Section(options, where, source)


def _string_list(sec: Section, key: str) -> Tuple[str, ...]:
    value = sec.get(key, ())
    if isinstance(value, str) or not isinstance(value, (list, tuple)) \
            or not all(isinstance(v, str) for v in value):
        raise sec.error(f"must be a list of strings, got {value!r}", key)
    return tuple(value)


def _string_map(sec: Section, key: str) -> Tuple[Tuple[str, str], ...]:
    value = sec.get(key, {})
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise sec.error(f"must be a mapping of strings to strings (quote numbers), got {value!r}", key)
    return tuple(sorted(value.items()))


def _memory_string(sec: Section, key: str, default: Optional[str] = None,
                   *, required: bool = False) -> Optional[str]:
    """A memory size as given ('2GB', '4GiB'), checked with dask's parse_bytes."""
    value = sec.get(key, default, required=required)
    if value is None:
        return None
    parse_memory(value, lambda msg: sec.error(msg, key))
    return str(value)


# ----------------------------------------------------------------------------- SLURM

SLURM_KEYS = ("kind", "jobs", "cores", "processes", "memory", "walltime", "partition", "account",
              "gpus_per_job", "interface", "scheduler_interface", "python", "extra_sbatch",
              "prologue", "job_name", "log_directory", "local_directory", "dashboard_address")

# minutes | minutes:seconds | hours:minutes:seconds | days-hours[:minutes[:seconds]]
_WALLTIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
#: The worker processes run one block per thread; the kernel engine's own threads are
#: pinned to one per task (as for ntkscale.cluster.client's LocalCluster workers).
SLURM_WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """``cluster: {kind: slurm, ...}``: one SLURM job per ``jobs``, ``processes`` workers each."""

    kind: str = "slurm"
    jobs: int = 1
    cores: int = 1                 # CPUs per job (split between its worker processes)
    processes: int = 1             # Dask worker processes per job
    memory: str = "4GB"            # per job (split between its worker processes)
    walltime: str = "01:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    gpus_per_job: int = 0          # --gres=gpu:N; one worker process per GPU
    interface: Optional[str] = None            # workers' (and by default the scheduler's) NIC
    scheduler_interface: Optional[str] = None  # scheduler's NIC when it differs (login node)
    python: Optional[str] = None               # python on the compute nodes (a venv's)
    extra_sbatch: Tuple[str, ...] = ()         # extra '#SBATCH' options, e.g. --constraint=h100
    prologue: Tuple[str, ...] = ()             # shell lines before the worker starts
    job_name: str = "ntkscale-worker"
    log_directory: Optional[str] = None
    local_directory: Optional[str] = None      # worker scratch (spill) directory on the node
    dashboard_address: str = ":8787"

    @property
    def slots(self) -> int:
        """Task slots once every job runs (threads over all workers)."""
        return self.jobs * self.cores


def parse_slurm_options(options: Any, base_dir: Union[str, Path] = ".", *,
                        where: str = "cluster", source: str = "<config>") -> SlurmOptions:
    """Validate ``cluster: {kind: slurm, ...}``; every error names its key."""
    sec = _section(options, where, source)
    sec.check_keys(SLURM_KEYS)
    if sec.get("kind", "slurm") != "slurm":
        raise sec.error(f"must be 'slurm' here, got {sec.get('kind')!r}", "kind")
    jobs, cores = sec.int("jobs", 1), sec.int("cores", 1)
    processes = sec.int("processes", 1)
    if processes > cores:
        raise sec.error(f"{processes} worker processes need at least as many cores; "
                        f"cores is {cores}", "processes")
    gpus = sec.int("gpus_per_job", 0, minimum=0)
    if gpus and processes != gpus:
        raise sec.error(f"with gpus_per_job: {gpus} use processes: {gpus} (one worker process "
                        f"per GPU), got {processes}", "processes")
    walltime = sec.get("walltime", "01:00:00")
    if not isinstance(walltime, str) or not _WALLTIME.match(walltime):
        raise sec.error(f"must be a SLURM time such as '01:00:00' or '1-12:00:00' (quote it in "
                        f"YAML), got {walltime!r}", "walltime")
    memory = _memory_string(sec, "memory", "4GB")
    if parse_memory(memory) // processes < 2**27:
        raise sec.error(f"{memory} split between {processes} worker processes leaves less than "
                        "128 MiB each", "memory")
    extra = _string_list(sec, "extra_sbatch")
    for item in extra:
        if not item.startswith("-"):
            raise sec.error(f"each entry is an sbatch option such as '--constraint=h100', "
                            f"got {item!r}", "extra_sbatch")
    base = Path(base_dir)

    def path(key: str) -> Optional[str]:
        value = sec.string(key)
        return None if value is None else str((base / value).resolve())

    return SlurmOptions(
        jobs=jobs, cores=cores, processes=processes, memory=memory, walltime=walltime,
        partition=sec.string("partition"), account=sec.string("account"), gpus_per_job=gpus,
        interface=sec.string("interface"), scheduler_interface=sec.string("scheduler_interface"),
        python=sec.string("python"), extra_sbatch=extra, prologue=_string_list(sec, "prologue"),
        job_name=sec.string("job_name", "ntkscale-worker"),
        log_directory=path("log_directory"), local_directory=sec.string("local_directory"),
        dashboard_address=sec.string("dashboard_address", ":8787"),
    )


def slurm_cluster_kwargs(options: Union[SlurmOptions, Mapping[str, Any]],
                         security: Any = None) -> Dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for these options (no I/O)."""
    opts = options if isinstance(options, SlurmOptions) else parse_slurm_options(options)
    directives: List[str] = []
    if opts.gpus_per_job:
        directives.append(f"--gres=gpu:{opts.gpus_per_job}")
    directives.extend(opts.extra_sbatch)
    prologue = [f"export {k}={v}" for k, v in SLURM_WORKER_ENV.items()] + list(opts.prologue)
    worker_args: List[str] = []
    if opts.gpus_per_job > 1:
        # Several worker processes in one job share its GPUs: each takes one (ntkscale.cluster.gpu).
        prologue.append(f"export NTKSCALE_WORKERS_PER_JOB={opts.processes}")
        worker_args += ["--preload", "ntkscale.cluster.gpu"]
    kwargs: Dict[str, Any] = dict(
        cores=opts.cores, processes=opts.processes, memory=opts.memory, walltime=opts.walltime,
        job_name=opts.job_name, job_extra_directives=directives, job_script_prologue=prologue,
        worker_extra_args=worker_args,
    )
    optional = dict(queue=opts.partition, account=opts.account, interface=opts.interface,
                    python=opts.python, log_directory=opts.log_directory,
                    local_directory=opts.local_directory)
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    scheduler_options: Dict[str, Any] = {"dashboard_address": opts.dashboard_address}
    if opts.scheduler_interface:
        scheduler_options["interface"] = opts.scheduler_interface
    kwargs["scheduler_options"] = scheduler_options
    if security is not None:
        kwargs["security"] = security
        kwargs["protocol"] = "tls://"
    return kwargs


def make_slurm_cluster(options: Union[SlurmOptions, Mapping[str, Any]], *,
                       security: Any = None) -> Any:
    """A ``SLURMCluster`` with ``jobs`` jobs submitted (workers join as the jobs start).

    Close it (``cluster.close()`` or ``with``) to cancel the jobs.
    """
    try:
        from dask_jobqueue import SLURMCluster  # noqa: PLC0415
    except ImportError:
        raise ConfigError("cluster.kind 'slurm' needs dask-jobqueue: pip install "
                          "'ntkscale[slurm]'") from None
    opts = options if isinstance(options, SlurmOptions) else parse_slurm_options(options)
    cluster = SLURMCluster(**slurm_cluster_kwargs(opts, security))
    try:
        cluster.scale(jobs=opts.jobs)
    except BaseException:
        cluster.close()
        raise
    return cluster


# ----------------------------------------------------------------------------- Kubernetes

KUBERNETES_KEYS = ("kind", "image", "namespace", "name", "n_workers", "gpus_per_worker", "memory",
                   "cpu", "threads_per_worker", "scheduler_memory", "scheduler_cpu",
                   "store_claim", "store_mount", "env", "node_selector", "tolerations",
                   "image_pull_policy", "idle_timeout", "port_forward", "run_as_user",
                   "resource_timeout")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: Writable places on a read-only root filesystem: everything goes under the /tmp emptyDir.
POD_ENV = {"HOME": "/tmp", "DASK_TEMPORARY_DIRECTORY": "/tmp", "CUPY_CACHE_DIR": "/tmp/cupy",
           "NUMBA_CACHE_DIR": "/tmp/numba", "XDG_CACHE_HOME": "/tmp/.cache",
           "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


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
    """Validate ``cluster: {kind: kubernetes, ...}``; every error names its key."""
    sec = _section(options, where, source)
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
        store_claim=claim, store_mount=mount, env=_string_map(sec, "env"),
        node_selector=_string_map(sec, "node_selector"),
        tolerations=None if tolerations is None else tuple(dict(t) for t in tolerations),
        image_pull_policy=policy, idle_timeout=sec.int("idle_timeout", 0, minimum=0),
        port_forward=port_forward, run_as_user=sec.int("run_as_user", 1000),
        resource_timeout=sec.int("resource_timeout"),
    )


def pod_security_context(uid: int) -> Dict[str, Any]:
    """Pod-level hardening (meets the 'restricted' Pod Security Standard)."""
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> Dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "privileged": False, "capabilities": {"drop": ["ALL"]}}


def _drop_none(value: Any) -> Any:
    """Remove None entries (make_cluster_spec leaves env/resources None when not given)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def kubernetes_cluster_spec(options: Union[KubernetesOptions, Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``DaskCluster`` resource for these options, built offline (no cluster contacted).

    Starts from ``dask_kubernetes.operator.make_cluster_spec`` and adds what it leaves out:
    separate scheduler/worker resources, ``nvidia.com/gpu`` limits, the store volume, a /tmp
    emptyDir under a read-only root filesystem, non-root security contexts, no service
    account token, and ``dask scheduler``/``dask worker`` commands (the ``dask-scheduler``
    and ``dask-worker`` scripts that make_cluster_spec names are gone from recent
    ``distributed``).
    """
    try:
        from dask_kubernetes.operator import make_cluster_spec  # noqa: PLC0415
    except ImportError:
        raise ConfigError("cluster.kind 'kubernetes' needs dask-kubernetes: pip install "
                          "'ntkscale[kubernetes]'") from None
    o = options if isinstance(options, KubernetesOptions) else parse_kubernetes_options(options)
    memory_bytes = parse_memory(o.memory)
    worker_limits = {"cpu": o.cpu, "memory": o.memory}
    if o.gpus_per_worker:
        # Extended resources: the request defaults to the limit. Quantities are strings: the
        # CRD types resources as map[string]string.
        worker_limits["nvidia.com/gpu"] = str(o.gpus_per_worker)
    env = {**POD_ENV, **dict(o.env)}
    worker_command = ["dask", "worker", "--nthreads", str(o.threads_per_worker),
                      "--memory-limit", str(memory_bytes), "--local-directory", "/tmp/dask"]
    spec = make_cluster_spec(
        name=o.name, image=o.image, n_workers=o.n_workers,
        resources={"requests": {"cpu": o.cpu, "memory": o.memory}, "limits": worker_limits},
        env=dict(env), worker_command=" ".join(worker_command),
        scheduler_service_type="ClusterIP", idle_timeout=o.idle_timeout,
    )
    spec = _drop_none(spec)

    def tmp_volume() -> Dict[str, Any]:
        return {"name": "tmp", "emptyDir": {}}

    def tmp_mount() -> Dict[str, Any]:
        return {"name": "tmp", "mountPath": "/tmp"}

    sched_pod = spec["spec"]["scheduler"]["spec"]
    sched = sched_pod["containers"][0]
    sched["args"] = ["dask", "scheduler", "--host", "0.0.0.0"]
    sched["resources"] = {
        "requests": {"cpu": o.scheduler_cpu, "memory": o.scheduler_memory},
        "limits": {"cpu": o.scheduler_cpu, "memory": o.scheduler_memory}}
    sched["volumeMounts"] = [tmp_mount()]
    sched_pod["volumes"] = [tmp_volume()]

    worker_pod = spec["spec"]["worker"]["spec"]
    worker = worker_pod["containers"][0]
    worker["volumeMounts"] = [tmp_mount()]
    worker_pod["volumes"] = [tmp_volume()]
    if o.store_claim:
        worker["volumeMounts"].append({"name": "store", "mountPath": o.store_mount})
        worker_pod["volumes"].append(
            {"name": "store", "persistentVolumeClaim": {"claimName": o.store_claim}})
    if o.node_selector:
        worker_pod["nodeSelector"] = dict(o.node_selector)
    tolerations = o.tolerations
    if tolerations is None and o.gpus_per_worker:
        tolerations = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
    if tolerations:
        worker_pod["tolerations"] = [dict(t) for t in tolerations]

    for pod in (sched_pod, worker_pod):
        pod["securityContext"] = pod_security_context(o.run_as_user)
        pod["automountServiceAccountToken"] = False
        container = pod["containers"][0]
        container["securityContext"] = container_security_context()
        if o.image_pull_policy:
            container["imagePullPolicy"] = o.image_pull_policy
    if o.namespace:
        spec["metadata"]["namespace"] = o.namespace
    spec["metadata"]["labels"] = {"app.kubernetes.io/name": "ntkscale",
                                  "app.kubernetes.io/component": "dask-cluster"}
    return spec


def make_kubernetes_cluster(options: Union[KubernetesOptions, Mapping[str, Any]]) -> Any:
    """Create the DaskCluster (:func:`kubernetes_cluster_spec`) through the Dask operator.

    Needs the operator installed in the cluster and RBAC to create DaskClusters in the
    namespace. Closing the returned ``KubeCluster`` deletes the DaskCluster.
    """
    try:
        from dask_kubernetes.operator import KubeCluster  # noqa: PLC0415
    except ImportError:
        raise ConfigError("cluster.kind 'kubernetes' needs dask-kubernetes: pip install "
                          "'ntkscale[kubernetes]'") from None
    o = options if isinstance(options, KubernetesOptions) else parse_kubernetes_options(options)
    kwargs: Dict[str, Any] = dict(custom_cluster_spec=kubernetes_cluster_spec(o),
                                  namespace=o.namespace, shutdown_on_close=True)
    if o.port_forward is not None:
        kwargs["port_forward_cluster_ip"] = o.port_forward
    if o.resource_timeout is not None:
        kwargs["resource_timeout"] = o.resource_timeout
    return KubeCluster(**kwargs)


# ----------------------------------------------------------------------------- TLS

TLS_KEYS = ("ca_file", "cert", "key", "scheduler_cert", "scheduler_key", "worker_cert",
            "worker_key", "client_cert", "client_key", "require_encryption", "min_version",
            "temporary")
TLS_VERSIONS = ("1.2", "1.3")


@dataclasses.dataclass(frozen=True)
class TLSOptions:
    """``tls:``: certificate files (absolute paths) for client, scheduler and workers."""

    ca_file: Optional[str] = None
    scheduler_cert: Optional[str] = None
    scheduler_key: Optional[str] = None
    worker_cert: Optional[str] = None
    worker_key: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    require_encryption: bool = True
    min_version: Optional[str] = None
    temporary: bool = False


def parse_tls_options(options: Any, base_dir: Union[str, Path] = ".", *, where: str = "tls",
                      source: str = "<config>", check_files: bool = True) -> TLSOptions:
    """Validate ``tls:``. ``cert``/``key`` serve every role unless a role names its own."""
    sec = _section(options, where, source)
    sec.check_keys(TLS_KEYS)
    base = Path(base_dir)
    temporary = sec.boolean("temporary", False)
    files = [k for k in TLS_KEYS if k.endswith(("cert", "key", "file")) and sec.get(k) is not None]
    if temporary:
        if files:
            raise sec.error(f"temporary: true makes its own certificates; drop {', '.join(files)}",
                            "temporary")
        return TLSOptions(temporary=True, require_encryption=sec.boolean("require_encryption", True))

    def path(key: str, fallback: Optional[str] = None) -> Optional[str]:
        value = sec.string(key)
        if value is None:
            return fallback
        full = str((base / value).resolve())
        if check_files and not Path(full).is_file():
            raise sec.error(f"file {full} does not exist", key)
        return full

    ca = path("ca_file")
    if ca is None:
        raise sec.error("is required (the CA that signed the certificates; or temporary: true)",
                        "ca_file")
    cert, key = path("cert"), path("key")
    roles = {}
    for role in ("scheduler", "worker", "client"):
        rc, rk = path(f"{role}_cert", cert), path(f"{role}_key", key)
        if rc is None:
            raise sec.error(f"no certificate for the {role}: give cert (all roles) or "
                            f"{role}_cert", f"{role}_cert")
        roles[role] = (rc, rk)
    version = sec.get("min_version")
    if version is not None and str(version) not in TLS_VERSIONS:
        raise sec.error(f"must be one of {', '.join(TLS_VERSIONS)} (quote it), got {version!r}",
                        "min_version")
    return TLSOptions(
        ca_file=ca, scheduler_cert=roles["scheduler"][0], scheduler_key=roles["scheduler"][1],
        worker_cert=roles["worker"][0], worker_key=roles["worker"][1],
        client_cert=roles["client"][0], client_key=roles["client"][1],
        require_encryption=sec.boolean("require_encryption", True),
        min_version=None if version is None else str(version),
    )


def security_from_tls(options: Union[TLSOptions, Mapping[str, Any], None],
                      base_dir: Union[str, Path] = ".") -> Any:
    """``tls:`` -> ``distributed.security.Security`` (None: no TLS, plain ``tcp://``)."""
    if options is None:
        return None
    import ssl  # noqa: PLC0415

    from distributed.security import Security  # noqa: PLC0415

    o = options if isinstance(options, TLSOptions) else parse_tls_options(options, base_dir)
    if o.temporary:
        return Security.temporary()  # self-signed, in memory: LocalCluster and tests only
    kwargs: Dict[str, Any] = dict(
        require_encryption=o.require_encryption, tls_ca_file=o.ca_file,
        tls_scheduler_cert=o.scheduler_cert, tls_scheduler_key=o.scheduler_key,
        tls_worker_cert=o.worker_cert, tls_worker_key=o.worker_key,
        tls_client_cert=o.client_cert, tls_client_key=o.client_key,
    )
    if o.min_version is not None:
        kwargs["tls_min_version"] = {"1.2": ssl.TLSVersion.TLSv1_2,
                                     "1.3": ssl.TLSVersion.TLSv1_3}[o.min_version]
    return Security(**{k: v for k, v in kwargs.items() if v is not None})


# ----------------------------------------------------------------------------- shared store


def _probe_store(probe: str, token: str) -> str:
    """Worker side: read the driver's probe file and write one next to it ('' if fine)."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        with open(probe, encoding="utf-8") as f:
            seen = f.read()
    except FileNotFoundError:
        return f"{probe} does not exist there (a different or unmounted filesystem)"
    except OSError as exc:
        return f"cannot read {probe}: {exc.strerror or exc}"
    if seen != token:
        return f"{probe} holds other content (a different filesystem at the same path)"
    mine = f"{probe}.{socket.gethostname()}.{os.getpid()}"
    try:
        with open(mine, "w", encoding="utf-8") as f:
            f.write(token)
        os.remove(mine)
    except OSError as exc:
        return f"cannot write in {os.path.dirname(probe)}: {exc.strerror or exc}"
    return ""


def check_store_visible(client: Any, store_dir: Union[str, Path]) -> int:
    """Fail fast unless every worker sees ``store_dir`` as the driver does, and can write there.

    The driver writes a file with a random token into the (existing) store directory; each
    worker must read the same token back and create a file beside it. Returns the number of
    workers checked. URLs (``s3://...``) are not checked.
    """
    import uuid  # noqa: PLC0415

    text = str(store_dir)
    if "://" in text:
        return 0
    token = uuid.uuid4().hex
    probe = Path(text) / f".ntkscale-probe-{token}"
    probe.write_text(token, encoding="utf-8")
    try:
        results = client.run(_probe_store, str(probe), token)
    finally:
        probe.unlink(missing_ok=True)
    bad = {worker: why for worker, why in results.items() if why}
    if bad:
        shown = "; ".join(f"{w}: {why}" for w, why in sorted(bad.items())[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ConfigError(
            f"store {text}: {len(bad)} of {len(results)} workers cannot use it: {shown}{more}. "
            "Put the store on a filesystem every worker mounts at the same path (NFS, Lustre, "
            "GPFS, a ReadWriteMany volume), not on node-local disk.")
    return len(results)


# ----------------------------------------------------------------------------- registration


@contextlib.contextmanager
def _slurm_client(opts: SlurmOptions, security: Any = None) -> Iterator[Any]:
    from distributed import Client  # noqa: PLC0415

    cluster = make_slurm_cluster(opts, security=security)
    try:
        with Client(cluster, security=security) as client:
            yield client
    finally:
        cluster.close()


@contextlib.contextmanager
def _kubernetes_client(opts: KubernetesOptions, security: Any = None) -> Iterator[Any]:
    from distributed import Client  # noqa: PLC0415

    if security is not None:
        raise ConfigError("tls: is not wired for cluster.kind 'kubernetes' here; mount the certificates "
                          "from a Secret as described in deploy/kubernetes/README.md")
    cluster = make_kubernetes_cluster(opts)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _register() -> None:
    from . import client as _cluster  # noqa: PLC0415
    from ..config import run as _config  # noqa: PLC0415

    _config.register_cluster_kind(
        "slurm", lambda sec, base: parse_slurm_options(sec, base, source=sec.source))
    _config.register_cluster_kind(
        "kubernetes", lambda sec, base: parse_kubernetes_options(sec, source=sec.source))
    _cluster.register_client_factory("slurm", _slurm_client)
    _cluster.register_client_factory("kubernetes", _kubernetes_client)


_register()
