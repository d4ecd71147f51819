"""Check that every Dask worker sees the store directory as the driver does.

The driver writes a probe file with a random token into the store directory
(:func:`check_store_visible`); each worker reads it back and writes one beside it
(:func:`probe_store`), so a store on node-local disk fails before any block is computed.
A store at a URL (object storage) is probed by ``store.location.check_remote_visible``
instead (each worker reads its ``zarr.json`` with its own credentials); both are called
from ``stages.gram.wait_until_ready``.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigError


def probe_store(probe: str, token: str) -> str:
    """Worker side: read the driver's probe file and write one next to it ('' if fine)."""
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
    text = str(store_dir)
    if "://" in text:
        return 0
    token = uuid.uuid4().hex
    probe = Path(text) / f".ntkscale-probe-{token}"
    probe.write_text(token, encoding="utf-8")
    try:
        results = client.run(probe_store, str(probe), token)
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
