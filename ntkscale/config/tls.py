"""The ``tls:`` section: certificate files for the client, the scheduler and the workers.

Parsed and validated here (files must exist unless ``check_files`` is false);
:func:`ntkscale.cluster.tls.security_from_tls` turns the options into a
``distributed.security.Security``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

from .sections import Section

TLS_KEYS = ("ca_file", "cert", "key", "scheduler_cert", "scheduler_key", "worker_cert",
            "worker_key", "client_cert", "client_key", "require_encryption", "min_version",
            "temporary")
TLS_VERSIONS = ("1.2", "1.3")


@dataclasses.dataclass(frozen=True)
class TLSOptions:
    """``tls:``: certificate files (absolute paths) for client, scheduler and workers."""

    ca_file: Optional[str] = None
    scheduler_cert: Optional[str] = None
    scheduler_key: Optional[str] = None
    worker_cert: Optional[str] = None
    worker_key: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    require_encryption: bool = True
    min_version: Optional[str] = None
    temporary: bool = False


def parse_tls_options(options: Any, base_dir: Union[str, Path] = ".", *, where: str = "tls",
                      source: str = "<config>", check_files: bool = True) -> TLSOptions:
    """Validate ``tls:``. ``cert``/``key`` serve every role unless a role names its own."""
    sec = Section.of(options, where, source)
    sec.check_keys(TLS_KEYS)
    base = Path(base_dir)
    temporary = sec.boolean("temporary", False)
    files = [k for k in TLS_KEYS if k.endswith(("cert", "key", "file")) and sec.get(k) is not None]
    if temporary:
        if files:
            raise sec.error(f"temporary: true makes its own certificates; drop {', '.join(files)}",
                            "temporary")
        return TLSOptions(temporary=True, require_encryption=sec.boolean("require_encryption", True))

    def path(key: str, fallback: Optional[str] = None) -> Optional[str]:
        value = sec.string(key)
        if value is None:
            return fallback
        full = str((base / value).resolve())
        if check_files and not Path(full).is_file():
            raise sec.error(f"file {full} does not exist", key)
        return full

    ca = path("ca_file")
    if ca is None:
        raise sec.error("is required (the CA that signed the certificates; or temporary: true)",
                        "ca_file")
    cert, key = path("cert"), path("key")
    roles = {}
    for role in ("scheduler", "worker", "client"):
        rc, rk = path(f"{role}_cert", cert), path(f"{role}_key", key)
        if rc is None:
            raise sec.error(f"no certificate for the {role}: give cert (all roles) or "
                            f"{role}_cert", f"{role}_cert")
        roles[role] = (rc, rk)
    version = sec.get("min_version")
    if version is not None and str(version) not in TLS_VERSIONS:
        raise sec.error(f"must be one of {', '.join(TLS_VERSIONS)} (quote it), got {version!r}",
                        "min_version")
    return TLSOptions(
        ca_file=ca, scheduler_cert=roles["scheduler"][0], scheduler_key=roles["scheduler"][1],
        worker_cert=roles["worker"][0], worker_key=roles["worker"][1],
        client_cert=roles["client"][0], client_key=roles["client"][1],
        require_encryption=sec.boolean("require_encryption", True),
        min_version=None if version is None else str(version),
    )
