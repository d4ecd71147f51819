#!/bin/sh
# ntkscale image entrypoint (run under tini, which forwards signals and reaps children).
#   scheduler [ARGS]   dask scheduler ARGS        (e.g. --scheduler-file /data/scheduler.json)
#   worker [ARGS]      dask worker ARGS           (e.g. tcp://scheduler:8786 --nthreads 1)
#   driver CONFIG      ntkscale run CONFIG
#   anything else      run as given (`dask worker ...`, `ntkscale plan ...`, `python ...`)
set -e
mkdir -p "${TMPDIR:-/tmp}" 2>/dev/null || true
case "${1:-}" in
  scheduler) shift; exec dask scheduler "$@" ;;
  worker)    shift; exec dask worker "$@" ;;
  driver)    shift; exec ntkscale run "$@" ;;
  "")        exec ntkscale --help ;;
  *)         exec "$@" ;;
esac
