"""``cluster: {kind: slurm}``: Dask workers in SLURM jobs, through dask-jobqueue.

:func:`slurm_cluster_kwargs` translates validated :class:`~ntkscale.config.slurm.SlurmOptions`
into ``SLURMCluster`` keyword arguments (no I/O); :func:`make_slurm_cluster` submits
the jobs; :func:`open_slurm` is the client opener of :data:`ntkscale.cluster.client.OPENERS`.
The scheduler runs where the driver runs (e.g. a login node). dask-jobqueue is an
optional dependency (``ntkscale[slurm]``), imported only when a cluster is made.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from ..config.slurm import SlurmOptions, parse_slurm_options
from ..errors import ConfigError

#: The worker processes run one block per thread; the kernel engine's own threads are
#: pinned to one per task (as for ntkscale.cluster.local's LocalCluster workers).
SLURM_WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}



#: dask-jobqueue runs ``python -m <worker_command>``: ``dask cuda worker`` through dask's
#: CLI, one worker process per GPU of the job (dask-cuda rotates CUDA_VISIBLE_DEVICES).
DASK_CUDA_WORKER_COMMAND = "dask cuda worker"


def gpu_worker_mode(opts: SlurmOptions, dask_cuda: Optional[bool] = None) -> Optional[str]:
    """How the jobs start GPU workers: ``"dask-cuda"``, ``"preload"`` or None (no
    GPUs). ``gpu_workers: auto`` means dask-cuda when it is installed here
    (``dask_cuda``: whether it is; default: look), as the nodes share the driver's
    environment in the usual setup."""
    if not opts.gpus_per_job:
        return None
    if opts.gpu_workers != "auto":
        return opts.gpu_workers
    if dask_cuda is None:
        dask_cuda = importlib.util.find_spec("dask_cuda") is not None
    return "dask-cuda" if dask_cuda else "preload"


def slurm_cluster_kwargs(options: Union[SlurmOptions, Mapping[str, Any]],
                         security: Any = None, dask_cuda: Optional[bool] = None) -> Dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for these options (no I/O
    but, for ``gpu_workers: auto``, whether dask-cuda is installed; ``dask_cuda``
    overrides that look)."""
    opts = options if isinstance(options, SlurmOptions) else parse_slurm_options(options)
    mode = gpu_worker_mode(opts, dask_cuda)
    directives: List[str] = []
    if opts.gpus_per_job:
        directives.append(f"--gres=gpu:{opts.gpus_per_job}")
    directives.extend(opts.extra_sbatch)
    prologue = [f"export {k}={v}" for k, v in SLURM_WORKER_ENV.items()] + list(opts.prologue)
    worker_args: List[str] = []
    command: Dict[str, Any] = {}
    if mode == "dask-cuda":
        # dask cuda worker: one worker per GPU SLURM gives the job, each seeing its own first.
        command["worker_command"] = DASK_CUDA_WORKER_COMMAND
    elif opts.gpus_per_job > 1:
        # Several worker processes in one job share its GPUs: each takes one (ntkscale.cluster.gpu).
        prologue.append(f"export NTKSCALE_WORKERS_PER_JOB={opts.processes}")
        worker_args += ["--preload", "ntkscale.cluster.gpu"]
    kwargs: Dict[str, Any] = dict(
        cores=opts.cores, processes=opts.processes, memory=opts.memory, walltime=opts.walltime,
        job_name=opts.job_name, job_extra_directives=directives, job_script_prologue=prologue,
        worker_extra_args=worker_args, **command,
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
        from dask_jobqueue import SLURMCluster  # noqa: PLC0415 (optional: ntkscale[slurm])
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



@contextlib.contextmanager
def open_slurm(opts: SlurmOptions, security: Any = None) -> Iterator[Any]:
    """A Client on a new SLURMCluster; the jobs are cancelled on exit."""
    from distributed import Client  # noqa: PLC0415 (heavy: imported when a cluster opens)

    cluster = make_slurm_cluster(opts, security=security)
    try:
        with Client(cluster, security=security) as client:
            yield client
    finally:
        cluster.close()
