"""The generated API in ctrpy/api: no drift from proto/, and containerd's wire shape.

The drift test regenerates everything with scripts/gen-proto into a temporary
directory and compares it byte for byte with the committed tree. The other tests
pin the facts a containerd client depends on: package, service and method
names, streaming kinds, field numbers, enum values and Any type URLs.
"""

from __future__ import annotations

import filecmp
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

import ctrpy.api
from ctrpy.api.cgroups.cgroup1.stats import metrics_pb2 as cgroup1_metrics_pb2
from ctrpy.api.cgroups.cgroup2.stats import metrics_pb2 as cgroup2_metrics_pb2
from ctrpy.api.containerd.events import container_pb2 as container_events_pb2
from ctrpy.api.containerd.events import image_pb2 as image_events_pb2
from ctrpy.api.containerd.events import task_pb2 as task_events_pb2
from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from ctrpy.api.containerd.services.version.v1 import version_pb2
from ctrpy.api.containerd.types import descriptor_pb2 as types_descriptor_pb2
from ctrpy.api.containerd.types import mount_pb2
from ctrpy.api.containerd.types.runc.options import oci_pb2
from ctrpy.api.containerd.types.task import task_pb2

REPO = Path(__file__).resolve().parent.parent
GEN_PROTO = REPO / "scripts" / "gen-proto"
API_DIR = Path(ctrpy.api.__file__).parent


def _all_api_modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.walk_packages(ctrpy.api.__path__, "ctrpy.api.")
    )


def _tree_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def _field_numbers(message: Descriptor) -> dict[str, int]:
    return {f.name: f.number for f in message.fields}


# --- drift -------------------------------------------------------------------


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "api"
    env = {**os.environ, "CTRPY_PYTHON": sys.executable}
    result = subprocess.run(
        [sys.executable, str(GEN_PROTO), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, (
        f"scripts/gen-proto failed:\n{result.stdout}{result.stderr}"
    )

    committed, fresh = _tree_files(API_DIR), _tree_files(out)
    problems = [f"only committed (stale): {p}" for p in sorted(committed - fresh)]
    problems += [f"missing from ctrpy/api: {p}" for p in sorted(fresh - committed)]
    problems += [
        f"differs: {p}"
        for p in sorted(committed & fresh)
        if not filecmp.cmp(API_DIR / p, out / p, shallow=False)
    ]
    assert not problems, (
        "ctrpy/api is out of date; run scripts/gen-proto:\n" + "\n".join(problems)
    )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    env = {**os.environ, "CTRPY_PYTHON": sys.executable}
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, str(GEN_PROTO), str(tmp_path / name)], env=env, check=True
        )
    comparison = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert (
        not comparison.diff_files
        and not comparison.left_only
        and not comparison.right_only
    )


def test_gen_proto_refuses_to_replace_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run(
        [sys.executable, str(GEN_PROTO), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "refusing" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# --- layout ------------------------------------------------------------------


@pytest.mark.parametrize("name", _all_api_modules())
def test_every_generated_module_imports(name: str) -> None:
    assert isinstance(importlib.import_module(name), ModuleType)


def test_every_generated_directory_is_a_package() -> None:
    for directory in [API_DIR, *(p for p in API_DIR.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            assert (directory / "__init__.py").is_file(), directory


def test_top_level_package_docstring_says_how_to_regenerate() -> None:
    assert ctrpy.api.__doc__ is not None
    assert "scripts/gen-proto" in ctrpy.api.__doc__


def test_no_top_level_proto_packages_are_needed() -> None:
    for name in _all_api_modules():
        importlib.import_module(name)
    leaked = sorted(
        m for m in sys.modules if m.split(".")[0] in ("containerd", "cgroups", "k8s")
    )
    assert leaked == []
    assert importlib.util.find_spec("containerd") is None
    assert importlib.util.find_spec("k8s") is None


def test_message_classes_report_their_real_module() -> None:
    assert task_events_pb2.TaskExit.__module__ == "ctrpy.api.containerd.events.task_pb2"


def test_status_comes_from_googleapis_common_protos() -> None:
    init_err = introspection_pb2.Plugin.DESCRIPTOR.fields_by_name["init_err"]
    assert init_err.message_type is status_pb2.Status.DESCRIPTOR
    assert not (API_DIR / "google").exists()


def test_local_status_proto_matches_googleapis(tmp_path: Path) -> None:
    """proto/google/rpc/status.proto is only a stand-in; it must agree on the wire."""
    out = tmp_path / "status.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={REPO / 'proto'}",
            f"--descriptor_set_out={out}",
            "google/rpc/status.proto",
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (local,) = [m for f in files for m in f.message_type if f.package == "google.rpc"]
    assert local.name == "Status"
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    ours = {
        (f.name, f.number, f.type, f.label == repeated, f.type_name.lstrip("."))
        for f in local.field
    }
    upstream = {
        (
            f.name,
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else "",
        )
        for f in status_pb2.Status.DESCRIPTOR.fields
    }
    assert ours == upstream


# --- Any type URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "full_name"),
    [
        (task_events_pb2.TaskExit, "containerd.events.TaskExit"),
        (container_events_pb2.ContainerCreate, "containerd.events.ContainerCreate"),
        (image_events_pb2.ImageCreate, "containerd.services.images.v1.ImageCreate"),
        (image_events_pb2.ImageDelete, "containerd.services.images.v1.ImageDelete"),
        (oci_pb2.Options, "containerd.runc.v1.Options"),
        (oci_pb2.ProcessDetails, "containerd.runc.v1.ProcessDetails"),
        (cgroup1_metrics_pb2.Metrics, "io.containerd.cgroups.v1.Metrics"),
        (cgroup2_metrics_pb2.Metrics, "io.containerd.cgroups.v2.Metrics"),
    ],
)
def test_any_type_urls_use_containerd_names(
    message: type[Message], full_name: str
) -> None:
    assert message.DESCRIPTOR.full_name == full_name
    packed = any_pb2.Any()
    packed.Pack(message())
    assert packed.type_url.endswith("/" + full_name)
    # containerd (and so ctrpy) uses the bare full name as the type URL.
    # Note that protobuf's Any.Is/Unpack reject URLs without a "/", so
    # decoders match the name themselves and parse the value.
    bare = any_pb2.Any(type_url=full_name, value=packed.value)
    assert bare.type_url.rsplit("/", 1)[-1] == message.DESCRIPTOR.full_name
    assert message.FromString(bare.value) == message()


def test_task_exit_round_trips_through_any() -> None:
    event = task_events_pb2.TaskExit(
        container_id="c1", id="c1", pid=42, exit_status=137
    )
    packed = any_pb2.Any(
        type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()
    )
    assert packed.type_url == "containerd.events.TaskExit"
    assert task_events_pb2.TaskExit.FromString(packed.value) == event


# --- field numbers and enum values ------------------------------------------------


def test_descriptor_has_no_field_4() -> None:
    assert _field_numbers(types_descriptor_pb2.Descriptor.DESCRIPTOR) == {
        "media_type": 1,
        "digest": 2,
        "size": 3,
        "annotations": 5,
    }


def test_diff_response_diff_is_field_3() -> None:
    assert _field_numbers(diff_pb2.DiffResponse.DESCRIPTOR) == {"diff": 3}
    wire = diff_pb2.DiffResponse(
        diff=types_descriptor_pb2.Descriptor(size=1)
    ).SerializeToString()
    assert wire[0] == (3 << 3) | 2  # field 3, length-delimited


def test_image_timestamps_are_fields_7_and_8() -> None:
    numbers = _field_numbers(images_pb2.Image.DESCRIPTOR)
    assert numbers == {
        "name": 1,
        "labels": 2,
        "target": 3,
        "created_at": 7,
        "updated_at": 8,
    }


def test_mount_and_process_fields() -> None:
    assert _field_numbers(mount_pb2.Mount.DESCRIPTOR) == {
        "type": 1,
        "source": 2,
        "target": 3,
        "options": 4,
    }
    process = _field_numbers(task_pb2.Process.DESCRIPTOR)
    assert (
        process["status"] == 4
        and process["terminal"] == 8
        and process["exited_at"] == 10
    )
    assert task_pb2.Process.DESCRIPTOR.full_name == "containerd.v1.types.Process"


def test_selected_request_field_numbers() -> None:
    create = _field_numbers(tasks_pb2.CreateTaskRequest.DESCRIPTOR)
    assert (
        create["rootfs"] == 3
        and create["options"] == 9
        and create["runtime_path"] == 10
    )
    assert _field_numbers(tasks_pb2.ExecProcessRequest.DESCRIPTOR)["exec_id"] == 7
    assert _field_numbers(snapshots_pb2.UpdateSnapshotRequest.DESCRIPTOR) == {
        "snapshotter": 1,
        "info": 2,
        "update_mask": 3,
    }
    assert _field_numbers(leases_pb2.CreateRequest.DESCRIPTOR) == {"id": 1, "labels": 3}
    assert _field_numbers(content_pb2.WriteContentRequest.DESCRIPTOR)["labels"] == 7
    assert _field_numbers(containers_pb2.Container.DESCRIPTOR)["extensions"] == 10
    assert _field_numbers(oci_pb2.Options.DESCRIPTOR)["systemd_cgroup"] == 9
    assert _field_numbers(cgroup1_metrics_pb2.MemoryStat.DESCRIPTOR)["usage"] == 33
    assert _field_numbers(cgroup2_metrics_pb2.Metrics.DESCRIPTOR)["memory_events"] == 8


def test_enum_values() -> None:
    assert dict(task_pb2.Status.items()) == {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    }
    assert dict(content_pb2.WriteAction.items()) == {"STAT": 0, "WRITE": 1, "COMMIT": 2}
    assert dict(snapshots_pb2.Kind.items()) == {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    }


# --- services ---------------------------------------------------------------------

# (service full name, {method: (client_streaming, server_streaming)}) for every
# service; a method missing here or on the server is a wire incompatibility.
UNARY = (False, False)
SERVICES: list[tuple[ServiceDescriptor, str, dict[str, tuple[bool, bool]]]] = [
    (
        version_pb2.DESCRIPTOR.services_by_name["Version"],
        "containerd.services.version.v1.Version",
        {"Version": UNARY},
    ),
    (
        introspection_pb2.DESCRIPTOR.services_by_name["Introspection"],
        "containerd.services.introspection.v1.Introspection",
        {"Plugins": UNARY, "Server": UNARY},
    ),
    (
        namespace_pb2.DESCRIPTOR.services_by_name["Namespaces"],
        "containerd.services.namespaces.v1.Namespaces",
        {m: UNARY for m in ("Get", "List", "Create", "Update", "Delete")},
    ),
    (
        containers_pb2.DESCRIPTOR.services_by_name["Containers"],
        "containerd.services.containers.v1.Containers",
        {
            **{m: UNARY for m in ("Get", "List", "Create", "Update", "Delete")},
            "ListStream": (False, True),
        },
    ),
    (
        content_pb2.DESCRIPTOR.services_by_name["Content"],
        "containerd.services.content.v1.Content",
        {
            **{
                m: UNARY
                for m in ("Info", "Update", "Delete", "Status", "ListStatuses", "Abort")
            },
            "List": (False, True),
            "Read": (False, True),
            "Write": (True, True),
        },
    ),
    (
        images_pb2.DESCRIPTOR.services_by_name["Images"],
        "containerd.services.images.v1.Images",
        {m: UNARY for m in ("Get", "List", "Create", "Update", "Delete")},
    ),
    (
        snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"],
        "containerd.services.snapshots.v1.Snapshots",
        {
            **{
                m: UNARY
                for m in (
                    "Prepare",
                    "View",
                    "Mounts",
                    "Commit",
                    "Remove",
                    "Stat",
                    "Update",
                    "Usage",
                    "Cleanup",
                )
            },
            "List": (False, True),
        },
    ),
    (
        diff_pb2.DESCRIPTOR.services_by_name["Diff"],
        "containerd.services.diff.v1.Diff",
        {"Apply": UNARY, "Diff": UNARY},
    ),
    (
        leases_pb2.DESCRIPTOR.services_by_name["Leases"],
        "containerd.services.leases.v1.Leases",
        {
            m: UNARY
            for m in (
                "Create",
                "Delete",
                "List",
                "AddResource",
                "DeleteResource",
                "ListResources",
            )
        },
    ),
    (
        tasks_pb2.DESCRIPTOR.services_by_name["Tasks"],
        "containerd.services.tasks.v1.Tasks",
        {
            m: UNARY
            for m in (
                "Create",
                "Start",
                "Delete",
                "DeleteProcess",
                "Get",
                "List",
                "Kill",
                "Exec",
                "ResizePty",
                "CloseIO",
                "Pause",
                "Resume",
                "ListPids",
                "Checkpoint",
                "Update",
                "Metrics",
                "Wait",
            )
        },
    ),
    (
        events_pb2.DESCRIPTOR.services_by_name["Events"],
        "containerd.services.events.v1.Events",
        {"Publish": UNARY, "Forward": UNARY, "Subscribe": (False, True)},
    ),
]


@pytest.mark.parametrize(
    ("service", "full_name", "methods"), SERVICES, ids=[s[1] for s in SERVICES]
)
def test_service_methods_and_streaming(
    service: ServiceDescriptor, full_name: str, methods: dict[str, tuple[bool, bool]]
) -> None:
    assert service.full_name == full_name
    actual = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert actual == methods


def test_grpc_stubs_use_containerd_method_paths() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def unary_unary(self, path: str, **_: object) -> None:
            self.paths.append(path)

        unary_stream = stream_unary = stream_stream = unary_unary

    channel = Recorder()
    tasks_pb2_grpc.TasksStub(cast(grpc.Channel, channel))
    assert "/containerd.services.tasks.v1.Tasks/Wait" in channel.paths
    assert len(channel.paths) == 17


def test_field_types_that_clients_decode() -> None:
    exit_status = task_events_pb2.TaskExit.DESCRIPTOR.fields_by_name["exit_status"]
    assert exit_status.type == FieldDescriptor.TYPE_UINT32
    size = types_descriptor_pb2.Descriptor.DESCRIPTOR.fields_by_name["size"]
    assert size.type == FieldDescriptor.TYPE_INT64
