"""Local disk vs a local S3 server: chunk throughput and a small Gram run (not CI).

    python benchmarks/bench_store.py [--chunks 16] [--block 1024] [--n 2048] [--repeats 3]

Writes and reads ``--chunks`` whole float64 chunks of ``block x block`` through zarr
(the store's code path: one chunk = one block = one file or one object) into a local
directory and into a bucket of moto's S3 server on loopback (``ThreadedMotoServer``,
the same server the tests use; a real S3 API over HTTP, in this process), then runs
``GramPipeline`` (FC ReLU, d = 64, both kernels, float64) on ``--n`` inputs into each.
Prints a table and writes ``benchmarks/results/store.json``.

Indicative only: moto keeps objects in Python memory behind a single-threaded HTTP
server sharing the machine's cores with the client, so it measures the overhead of
the S3 code path (HTTP, signing, one request per chunk and per manifest entry), not
a real object store's bandwidth (AWS S3 gives ~100 MB/s per connection and scales
with parallel requests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.s3 import new_bucket, s3_server  # noqa: E402


def chunk_io(store, chunks: int, block: int, repeats: int):
    import zarr

    data = np.random.default_rng(0).standard_normal((block, block))
    mib = chunks * data.nbytes / 2**20
    best_w = best_r = float("inf")
    for r in range(repeats):
        arr = zarr.create_array(store, name=f"bench{r}", shape=(chunks * block, block), chunks=(block, block),
                                dtype="float64", compressors=None, overwrite=True, config={"write_empty_chunks": True})
        t = time.perf_counter()
        for i in range(chunks):
            arr[i * block:(i + 1) * block] = data
        best_w = min(best_w, time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(chunks):
            np.asarray(arr[i * block:(i + 1) * block])
        best_r = min(best_r, time.perf_counter() - t)
    return {"write_MiB_s": mib / best_w, "read_MiB_s": mib / best_r, "MiB": mib}


def gram_run(store: str, tmp: Path, n: int, block: int):
    from ntkscale.config.run import RunConfig
    from ntkscale.stages.gram import GramPipeline

    x = np.random.default_rng(1).standard_normal((n, 64))
    np.save(tmp / "x.npy", x)
    cfg = {"data": {"train": {"x": "x.npy"}},
           "kernel": {"layers": [["Dense", {"W_std": 1.4, "b_std": 0.1}], ["Relu", {}], ["Dense", {"W_std": 1.4}]],
                      "get": ["nngp", "ntk"]},
           "store": store, "block_size": block, "dtype": "float64",
           "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "processes": True,
                       "dashboard_address": ":0"}}
    rep = GramPipeline(RunConfig.from_mapping(cfg, tmp), progress=False).run()
    return {"seconds": rep.seconds, "blocks": rep.blocks_computed, "stored_MiB": rep.stored_bytes / 2**20,
            "blocks_seconds": rep.blocks_seconds, "write_s": sum(r["write_s"] for r in rep.records),
            "compute_s": rep.compute_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--gram-block", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "store.json"))
    args = ap.parse_args()
    import zarr

    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg(),
           "chunk_MiB": args.block ** 2 * 8 / 2**20, "chunks": args.chunks, "n": args.n}
    with tempfile.TemporaryDirectory() as d, s3_server():
        tmp = Path(d)
        bucket = new_bucket("bench")
        out["local_chunks"] = chunk_io(str(tmp / "local.zarr"), args.chunks, args.block, args.repeats)
        out["s3_chunks"] = chunk_io(zarr.storage.FsspecStore.from_url(f"s3://{bucket}/chunks.zarr"),
                                    args.chunks, args.block, args.repeats)
        out["local_gram"] = gram_run(str(tmp / "run.zarr"), tmp, args.n, args.gram_block)
        out["s3_gram"] = gram_run(f"s3://{bucket}/run.zarr", tmp, args.n, args.gram_block)
    out["load_after"] = os.getloadavg()
    print(f"chunks of {out['chunk_MiB']:.0f} MiB x {args.chunks}, best of {args.repeats}:")
    for where in ("local", "s3"):
        c = out[f"{where}_chunks"]
        print(f"  {where:<6} write {c['write_MiB_s']:8.1f} MiB/s   read {c['read_MiB_s']:8.1f} MiB/s")
    print(f"Gram n = {args.n}, block {args.gram_block}, 2 worker processes:")
    for where in ("local", "s3"):
        g = out[f"{where}_gram"]
        print(f"  {where:<6} {g['seconds']:6.1f} s end to end, blocks {g['blocks_seconds']:6.1f} s "
              f"(write {g['write_s']:.1f} s, compute {g['compute_s']:.1f} s summed over tasks), "
              f"{g['stored_MiB']:.0f} MiB stored")
    print(f"load average before {out['load_before'][0]:.1f}, after {out['load_after'][0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
