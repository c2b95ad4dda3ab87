"""The registry client's failures, as subclasses of ctrpy's error kinds.

Each carries the host it happened on in its message, because a pull may touch a mirror, the
upstream registry and a token realm, and the user needs to know which one failed. The edge
(``manager/services/edge.py``) translates them like any other kind::

    Unauthorized      FailedPrecondition  the registry (or token realm) refused the credentials
    UntrustedCertificate  FailedPrecondition  the registry's TLS certificate does not verify
    DigestMismatch    FailedPrecondition  bytes received do not hash to the digest asked for
    TooLarge          OutOfRange          a manifest or config bigger than the client accepts
    RegistryStalled   DeadlineExceeded    no bytes arrived for ``stall_timeout`` seconds
    RegistryUnavailable  Unavailable      connection errors, 429 and 5xx, after every retry
    NotFound (ctrpy)  NotFound            the manifest or blob is on none of the endpoints
"""

from __future__ import annotations

from ctrpy.errors import DeadlineExceeded, FailedPrecondition, OutOfRange, Unavailable


class Unauthorized(FailedPrecondition):
    """Raised when a registry answers 401/403 after the client offered what credentials it has,
    or when a token realm refuses to issue a token."""


class UntrustedCertificate(FailedPrecondition):
    """Raised when a registry's TLS certificate does not verify (unknown CA, wrong name,
    expired). Not retried: only configuration (``ca`` or ``skip_verify`` in its hosts.toml)
    changes the outcome, so the message says so instead of reporting an unavailable registry."""


class DigestMismatch(FailedPrecondition):
    """Raised when what a registry sent does not match the digest (or size) it was asked for,
    or when its ``Docker-Content-Digest`` header contradicts the bytes."""


class TooLarge(OutOfRange):
    """Raised when a manifest, index or config exceeds the client's size limit; they are read
    into memory whole, so the limit is what keeps a hostile registry from exhausting it."""


class RegistryStalled(DeadlineExceeded):
    """Raised when a connection made no progress for the configured no-progress time. It is not
    retried: a registry that stalls once is likely to stall again, and the user asked for a bound."""


class RegistryUnavailable(Unavailable):
    """Raised when connection errors, 429 or 5xx answers outlasted every retry."""
