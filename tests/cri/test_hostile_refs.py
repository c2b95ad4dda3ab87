"""Image names from anywhere (hypothesis) to ImageStatus, RemoveImage and ListImages' filter:
an answer or INVALID_ARGUMENT, never UNKNOWN or INTERNAL, and nothing removed that was not
named. (PullImage is not fuzzed: a random name would send the daemon to a real registry.)"""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from tests.cri.conftest import CriDaemon, Images

NAMES = st.one_of(
    st.text(max_size=300),
    st.from_regex(r"(sha256:)?[0-9a-f]{0,70}", fullmatch=True),
    st.from_regex(r"[a-z0-9.:/@_-]{1,80}", fullmatch=True),
)


def _answer(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=30)  # type: ignore[operator]
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_any_name(cri_daemon: CriDaemon, cri_images: Images, name: str) -> None:
    with cri_daemon.client() as cri:
        kept = cri.pull_image(f"{cri_images.host}/library/busybox:1")
        named = _names(cri, kept)
        spec = api.ImageSpec(image=name)
        for call, request in ((cri.images.ImageStatus, api.ImageStatusRequest(image=spec, verbose=True)),
                              (cri.images.ListImages, api.ListImagesRequest(filter=api.ImageFilter(image=spec))),
                              (cri.images.RemoveImage, api.RemoveImageRequest(image=spec))):
            code = _answer(call, request)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (call, name, code)
        if name not in named and not kept.removeprefix("sha256:").startswith(name.removeprefix("sha256:")):
            assert cri.image_status(kept)[0] is not None, name


def _names(cri: CriClient, image_id: str) -> set[str]:
    image, _ = cri.image_status(image_id)
    if image is None:
        return set()
    return {image_id, *image.repo_tags, *image.repo_digests}
