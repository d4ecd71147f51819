#!/usr/bin/env bash
# SLURM suite: boot a local single-node SLURM, run the tests marked `slurm`, always shut it down.
# Needs root (apt-get install slurm-wlm munge on first use) and the `slurm` extra
# (dask-jobqueue); called from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q -e '.[test,slurm]'
trap 'deploy/slurm/local-slurm.sh down || true' EXIT
deploy/slurm/local-slurm.sh up
sinfo
python3 -m pytest -m slurm -q
