"""Live configuration: the policy and the serving certificate follow their files, no restart.

Both arrive as mounted volumes (a ConfigMap, a Secret from cert-manager or a rotated Secret).
Kubernetes updates those by swapping a ``..data`` symlink, which many file-event APIs miss, so
the files are compared by *content* on a short poll, as kopf does for certificates.

- Policy: a new file is validated completely before it replaces the old one; an invalid file
  is logged and counted, and the last good policy stays in force.
- Certificate: the new pair is loaded into the very ``SSLContext`` uvicorn serves with
  (``load_cert_chain`` replaces the context's certificate for new handshakes; connections
  already open keep theirs), so nothing in flight fails. A half-written pair (cert and key not
  matching yet) fails to load and is retried on the next poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.policy import Policy

__all__ = ["DEFAULT_INTERVAL", "FileWatch", "certificate_reloader", "policy_reloader"]

log = logging.getLogger("gpu_webhook.reload")

#: Kubernetes propagates ConfigMap/Secret changes within about a minute; a few seconds of
#: polling on top of that costs nothing (two small files hashed).
DEFAULT_INTERVAL = 5.0

#: Called with ("policy"|"certificate", ok) after every reload attempt, for metrics; ok is None
#: when the watch itself hit an unexpected error (logged, counted, and the watch goes on).
ReloadObserver = Callable[[str, "bool | None"], None]


def _fingerprint(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError as err:  # a file being replaced: try again next poll
            digest.update(f"missing:{err.errno}".encode())
    return digest.hexdigest()


class FileWatch:
    """Calls ``on_change()`` when the content of any of ``paths`` changes; ``on_change`` returns
    whether the new content was taken (if not, the same content is not retried until it changes)."""

    def __init__(self, paths: Sequence[Path], on_change: Callable[[], bool], interval: float = DEFAULT_INTERVAL,
                 on_error: Callable[[], None] = lambda: None):
        self.paths = [Path(p) for p in paths]
        self.on_change = on_change
        self.interval = interval
        self.on_error = on_error
        self.seen = _fingerprint(self.paths)

    def check(self) -> bool:
        """One poll: True when the files changed (whether or not the change was taken)."""
        current = _fingerprint(self.paths)
        if current == self.seen:
            return False
        if self.on_change():
            self.seen = current
        return True

    async def run(self) -> None:
        """Poll until cancelled. An unexpected error in one poll is logged with its traceback and
        counted, and polling goes on: hot reload never ends silently."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # one bad poll must not end reloading for good
                log.exception("file watch of %s failed; polling goes on", ", ".join(map(str, self.paths)))
                self.on_error()


def _errors(what: str, observe: ReloadObserver | None) -> Callable[[], None]:
    return (lambda: observe(what, None)) if observe is not None else (lambda: None)


def policy_reloader(path: Path, apply: Callable[[Policy], None], observe: ReloadObserver | None = None,
                    interval: float = DEFAULT_INTERVAL) -> FileWatch:
    """Watch the policy file; ``apply`` receives each new valid policy."""
    from ..core.policy import PolicyError, load_policy  # here: `gpu-webhook --help` reads DEFAULT_INTERVAL

    def reload() -> bool:
        try:
            policy = load_policy(path)
        except PolicyError as err:
            log.error("policy reload refused, the last good policy stays in force:\n%s", err)
            ok = False
        else:
            apply(policy)
            log.info("policy reloaded from %s: %s (%d profiles, %d tenants, enforcement %s)", path,
                     policy.metadata.name, len(policy.spec.profiles), len(policy.spec.tenants),
                     policy.spec.enforcement)
            ok = True
        if observe is not None:
            observe("policy", ok)
        return True  # a refused file is not retried until it changes again

    return FileWatch([path], reload, interval, _errors("policy", observe))


def certificate_reloader(context: ssl.SSLContext, cert: Path, key: Path, observe: ReloadObserver | None = None,
                         interval: float = DEFAULT_INTERVAL) -> FileWatch:
    """Watch the serving pair; load it into ``context`` when both files are consistent."""

    def reload() -> bool:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            log.warning("serving certificate not reloaded yet (%s); retrying", err)
            ok = False
        else:
            log.info("serving certificate reloaded from %s", cert)
            ok = True
        if observe is not None:
            observe("certificate", ok)
        return ok  # a half-written pair is retried on the next poll

    return FileWatch([cert, key], reload, interval, _errors("certificate", observe))
