"""``cluster: {kind: kubernetes}``: a DaskCluster resource made by the Dask operator.

:func:`kubernetes_cluster_spec` builds the ``DaskCluster`` resource offline from validated
:class:`~ntkscale.config.kubernetes.KubernetesOptions` (with dask-kubernetes'
``make_cluster_spec``, then hardened); :func:`make_kubernetes_cluster` creates it through
a ``KubeCluster``; :func:`open_kubernetes` is the client opener of
:data:`ntkscale.cluster.client.OPENERS`. dask-kubernetes is an optional dependency
(``ntkscale[kubernetes]``), imported only when a spec or a cluster is made.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Mapping, Union

from ..config.kubernetes import KubernetesOptions, parse_kubernetes_options
from ..config.sections import parse_memory
from ..errors import ConfigError

#: Writable places on a read-only root filesystem: everything goes under the /tmp emptyDir.
POD_ENV = {"HOME": "/tmp", "DASK_TEMPORARY_DIRECTORY": "/tmp", "CUPY_CACHE_DIR": "/tmp/cupy",
           "NUMBA_CACHE_DIR": "/tmp/numba", "XDG_CACHE_HOME": "/tmp/.cache",
           "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}



def pod_security_context(uid: int) -> Dict[str, Any]:
    """Pod-level hardening (meets the 'restricted' Pod Security Standard)."""
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> Dict[str, Any]:
    """Container-level hardening: no privilege escalation, read-only root, no capabilities."""
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
        from dask_kubernetes.operator import make_cluster_spec  # noqa: PLC0415 (optional dependency)
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
        from dask_kubernetes.operator import KubeCluster  # noqa: PLC0415 (optional dependency)
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



@contextlib.contextmanager
def open_kubernetes(opts: KubernetesOptions, security: Any = None) -> Iterator[Any]:
    """A Client on a new DaskCluster; the DaskCluster is deleted on exit."""
    from distributed import Client  # noqa: PLC0415 (heavy: imported when a cluster opens)

    if security is not None:
        raise ConfigError("tls: is not wired for cluster.kind 'kubernetes' here; mount the certificates "
                          "from a Secret as described in deploy/kubernetes/README.md")
    cluster = make_kubernetes_cluster(opts)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()
