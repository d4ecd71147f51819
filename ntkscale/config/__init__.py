"""The run configuration: parsed and validated once, frozen; no Dask, no I/O past the file.

``run``         RunConfig, load_config (data, kernel, store and top-level keys)
``cluster``     the ``cluster:`` kinds (local, address, slurm, kubernetes) in CLUSTER_PARSERS
``slurm``, ``kubernetes``   the options of those two kinds
``tls``         the ``tls:`` section
``solver``      the ``solver:`` and ``task:`` sections
``sections``    Section (key checks, named errors) and parse_memory
"""

from .cluster import CLUSTER_PARSERS, AddressClusterConfig, ClusterConfig, LocalClusterConfig
from .kubernetes import KubernetesOptions
from .run import RunConfig, load_config
from .slurm import SlurmOptions
from .solver import SolverConfig
from .tls import TLSOptions

__all__ = ["AddressClusterConfig", "CLUSTER_PARSERS", "ClusterConfig", "KubernetesOptions",
           "LocalClusterConfig", "RunConfig", "SlurmOptions", "SolverConfig", "TLSOptions",
           "load_config"]
