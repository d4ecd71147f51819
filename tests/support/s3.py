"""A real S3 API on loopback for the object-storage tests: moto's server mode.

:func:`s3_server` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free
port, and points the standard AWS environment variables at it (``AWS_ENDPOINT_URL``,
test credentials), so everything started from the test process -- ``ntkscale``
subprocesses, LocalCluster worker processes -- talks to it through s3fs/botocore
over HTTP like to any S3 endpoint. No client is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Dict, Iterator

import pytest

#: The environment of a test S3 server (the endpoint is added by :func:`s3_server`).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ntkscale-test", "AWS_SECRET_ACCESS_KEY": "ntkscale-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
#: Variables that would send requests elsewhere (a developer's own AWS profile).
CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3")


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start the server, set the AWS environment for it; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = dict(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    saved: Dict[str, str | None] = {k: os.environ.get(k) for k in (*env, *CLEARED)}
    os.environ.update(env)
    for key in CLEARED:
        os.environ.pop(key, None)
    # fsspec caches filesystems by their arguments, which do not include the endpoint
    # taken from the environment: one made for an earlier server must not be reused
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def new_bucket(prefix: str = "ntk") -> str:
    """Create an empty bucket on the current endpoint and return its name."""
    import s3fs  # noqa: PLC0415 - optional test dependency

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    fs.mkdir(name)
    return name


def s3fs_client():
    """A fresh s3fs filesystem (no listing cache) on the current endpoint."""
    import s3fs  # noqa: PLC0415 - optional test dependency

    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
