"""``tls:`` -> ``distributed.security.Security`` for the client, scheduler and workers."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Dict, Mapping, Union

from ..config.tls import TLSOptions, parse_tls_options


def security_from_tls(options: Union[TLSOptions, Mapping[str, Any], None],
                      base_dir: Union[str, Path] = ".") -> Any:
    """``tls:`` -> ``distributed.security.Security`` (None: no TLS, plain ``tcp://``)."""
    if options is None:
        return None
    from distributed.security import Security  # noqa: PLC0415 (heavy: imported when TLS is used)

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
