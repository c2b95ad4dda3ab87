"""The OCI distribution client of ctrpyd: resolve, fetch (and push) images from registries.

Used by the Transfer service and the CRI's PullImage; the CLI reaches it only through the API.
Imports point one way: ``ctrpy.errors`` and ``ctrpy.images`` (references, documents,
platforms) <- ``errors``, ``reference``, ``hosts``, ``auth`` <- ``session`` (HTTP, retries)
<- ``remote`` (resolve, fetch) <- ``manifests`` (platform selection, pull plans), ``push``
(blob exists, monolithic and chunked upload, cross-repository mount, manifest PUT).

A daemon makes one :class:`Session` and closes it at shutdown; each pull or push makes a
:class:`Remote` with the request's hosts directory, ``plain_http`` and credentials::

    async with Session(Options(stall_timeout=30)) as session:
        remote = Remote(session, config_path="/etc/ctrpy/certs.d", credentials=creds)
        resolved = await remote.resolve("docker.io/library/busybox:latest")
        image = await plan(remote, resolved, platforms.default())
        for layer in image.layers():
            async for chunk in remote.fetch_blob(image.ref, layer, offset=already_written):
                ...
"""

from ctrpy.manager.registry.auth import (
    AskingCredentialSource,
    Authorizer,
    Challenge,
    Credentials,
    CredentialSource,
    DockerConfigCredentials,
    NoCredentials,
    StaticCredentials,
    parse_challenges,
    parse_user,
)
from ctrpy.manager.registry.errors import (
    DigestMismatch,
    RegistryStalled,
    RegistryUnavailable,
    TooLarge,
    Unauthorized,
    UntrustedCertificate,
)
from ctrpy.manager.registry.hosts import Capability, Endpoint, endpoints
from ctrpy.manager.registry.manifests import ImagePlan, plan, select
from ctrpy.manager.registry.push import Uploaded, blob_exists, put_manifest, upload_blob
from ctrpy.manager.registry.reference import ImageRef, parse
from ctrpy.manager.registry.remote import Remote, Resolved
from ctrpy.manager.registry.session import Options, Session

__all__ = [
    "AskingCredentialSource", "Authorizer", "Capability", "Challenge", "CredentialSource", "Credentials", "DigestMismatch",
    "DockerConfigCredentials", "Endpoint", "ImagePlan", "ImageRef", "NoCredentials", "Options",
    "RegistryStalled", "RegistryUnavailable", "Remote", "Resolved", "Session", "StaticCredentials",
    "TooLarge", "Unauthorized", "UntrustedCertificate", "Uploaded", "blob_exists", "endpoints", "parse", "parse_challenges",
    "parse_user", "plan", "put_manifest", "select", "upload_blob",
]
