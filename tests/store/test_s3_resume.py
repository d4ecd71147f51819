"""Kill and resume on object storage: ``ntkscale gram`` writing to a real S3 API is
SIGKILLed mid-run (with everything it started); its lease expires by itself, and the
rerun takes it over, computes only the missing blocks and ends with the Gram of an
uninterrupted local-disk run, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from ntkscale.config.run import RunConfig
from ntkscale.gram.schedule import FAULT_DELAY_ENV
from ntkscale.stages.gram import GramPipeline
from ntkscale.store.gram_store import GramStore
from ntkscale.store.lease import TTL_ENV, lease_holder
from ntkscale.store.location import StoreLocation
from ntkscale.store.maintenance import status, verify
from tests.support.gram import config_dict, make_data, write_config
from tests.support.processes import kill_group, start_cli, wait_for
from tests.support.s3 import new_bucket, s3_server

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

THREADS = {"kind": "local", "n_workers": 1, "processes": False, "dashboard_address": ":0"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _arrays(store):
    s = GramStore.open(store)
    out = {f"{p}/{k}": s.array(p, k)[...] for p in ("train", "test") for k in s.kinds}
    out.update({f"diag/{w}/{k}": s.diag(w, k) for w in ("train", "test") for k in s.kinds})
    return out


def test_sigkilled_gram_on_s3_resumes_to_the_local_disk_gram(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_limits

    with s3_server():
        data = make_data(tmp_path, n=40, m=12, d=5)
        local = config_dict(data, store="local.zarr", block_size=16, cluster=THREADS)
        with threadpool_limits(1):
            GramPipeline(RunConfig.from_mapping(local, tmp_path), progress=False).run()
        url = f"s3://{new_bucket('resume')}/run.zarr"
        cfg = write_config(tmp_path, dict(local, store=url), "s3.yaml")
        env = {FAULT_DELAY_ENV: "0.5", TTL_ENV: "2", **ONE_THREAD}
        proc = start_cli("gram", str(cfg), cwd=tmp_path, env=env, log=tmp_path / "gram.log")
        try:
            wait_for(lambda: GramStore.is_store(url) and status(url)["blocks_done"] >= 3, proc, timeout=120,
                     what="three blocks in the bucket")
            holder = lease_holder(StoreLocation.parse(url))
            assert holder is not None and holder["pid"] == proc.pid     # the running CLI holds the lease
        finally:
            kill_group(proc)
        done = status(url)["blocks_done"]
        assert 3 <= done < 13, (tmp_path / "gram.log").read_text()[-2000:]
        wait_for(lambda: lease_holder(StoreLocation.parse(url)) is None, timeout=10,
                 what="the killed run's lease to expire")
        monkeypatch.setenv(TTL_ENV, "2")
        with threadpool_limits(1):
            rep = GramPipeline(RunConfig.from_mapping(dict(local, store=url), tmp_path), progress=False).run()
        assert rep.blocks_done_before == done and rep.blocks_computed == 13 - done
        assert verify(url)["clean"]
        ref, got = _arrays(tmp_path / "local.zarr"), _arrays(url)
        assert sorted(ref) == sorted(got)
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
