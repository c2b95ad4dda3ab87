"""The security context in a CRI container's spec: capabilities, privileged, read-only rootfs,
no_new_privs, masked and read-only paths, seccomp and AppArmor (no kernel needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.manager.cri import seccomp
from ctrpy.manager.cri.containerspec import container_spec
from ctrpy.oci.defaults import DEFAULT_CAPABILITIES, MASKED_PATHS
from tests.cri_spec.support import FACTS, container, image, make_rootfs, sandbox

CAPS = ("bounding", "effective", "permitted")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def build(tmp_path: Path, rootfs: Path, config: api.ContainerConfig, **linux: Any) -> dict[str, Any]:
    return container_spec("ctr-1", config, sandbox(tmp_path / "sb", **linux), image(), str(rootfs), facts=FACTS)


def with_context(**fields: Any) -> api.ContainerConfig:
    config = container()
    context = config.linux.security_context
    for key, value in fields.items():
        if key in ("add", "drop"):
            getattr(context.capabilities, f"{key}_capabilities").extend(value)
        elif key in ("masked_paths", "readonly_paths"):
            getattr(context, key).extend(value)
        elif key in ("seccomp", "apparmor"):
            getattr(context, key).CopyFrom(value)
        else:
            setattr(context, key, value)
    return config


def caps(spec: dict[str, Any]) -> list[str]:
    sets = spec["process"]["capabilities"]
    assert all(sets[key] == sets["bounding"] for key in CAPS)
    assert "ambient" not in sets and "inheritable" not in sets
    return list(sets["bounding"])


@pytest.mark.parametrize(("add", "drop", "expected"), [
    ([], [], list(DEFAULT_CAPABILITIES)),
    (["SYS_ADMIN"], ["CHOWN"], [c for c in DEFAULT_CAPABILITIES if c != "CAP_CHOWN"] + ["CAP_SYS_ADMIN"]),
    ([], ["ALL"], []),
    (["NET_ADMIN"], ["ALL"], ["CAP_NET_ADMIN"]),
    (["cap_sys_time"], [], [*DEFAULT_CAPABILITIES, "CAP_SYS_TIME"]),
])  # fmt: skip
def test_capabilities_add_and_drop(tmp_path: Path, rootfs: Path, add: list[str], drop: list[str],
                                   expected: list[str]) -> None:
    assert caps(build(tmp_path, rootfs, with_context(add=add, drop=drop))) == expected


def test_add_all_then_drop_one(tmp_path: Path, rootfs: Path) -> None:
    found = caps(build(tmp_path, rootfs, with_context(add=["ALL"], drop=["CHOWN"])))
    assert "CAP_CHOWN" not in found and "CAP_SYS_ADMIN" in found and len(found) == len(FACTS.capabilities) - 1


def test_unknown_capability_is_refused(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        build(tmp_path, rootfs, with_context(add=["FLY"]))


def test_privileged_container(tmp_path: Path, rootfs: Path) -> None:
    config = with_context(privileged=True, drop=["ALL"], masked_paths=["/proc/kcore"],
                          seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.RuntimeDefault))
    spec = build(tmp_path, rootfs, config, privileged=True)
    assert caps(spec) == list(FACTS.capabilities)
    linux = spec["linux"]
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux and "seccomp" not in linux
    sysfs = [m for m in spec["mounts"] if m["destination"] in ("/sys", "/sys/fs/cgroup")]
    assert len(sysfs) == 2 and all("ro" not in m["options"] for m in sysfs)
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    paths = {d["path"] for d in linux["devices"]}
    assert "/dev/null" in paths and not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)
    assert "/dev/console" not in paths


def test_privileged_needs_a_privileged_sandbox(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="no privileged container allowed in sandbox"):
        build(tmp_path, rootfs, with_context(privileged=True))


def test_readonly_rootfs_and_no_new_privs(tmp_path: Path, rootfs: Path) -> None:
    spec = build(tmp_path, rootfs, with_context(readonly_rootfs=True, no_new_privs=True))
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["process"]["noNewPrivileges"] is True
    files = {m["destination"]: m for m in spec["mounts"] if m["destination"].startswith("/etc/")}
    assert set(files) == {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}
    assert all("ro" in m["options"] for m in files.values())


def test_masked_and_readonly_paths(tmp_path: Path, rootfs: Path) -> None:
    spec = build(tmp_path, rootfs, with_context(masked_paths=["/bin/ls"], readonly_paths=["/etc"]))
    assert spec["linux"]["maskedPaths"] == ["/bin/ls"]
    assert spec["linux"]["readonlyPaths"] == ["/etc"]
    assert build(tmp_path, rootfs, container())["linux"]["maskedPaths"] == list(MASKED_PATHS)


def profile(kind: int, ref: str = "") -> api.SecurityProfile:
    return api.SecurityProfile(profile_type=kind, localhost_ref=ref)  # type: ignore[arg-type]


def test_seccomp_runtime_default_both_ways(tmp_path: Path, rootfs: Path) -> None:
    new = build(tmp_path, rootfs, with_context(seccomp=profile(api.SecurityProfile.RuntimeDefault)))
    for old in ("runtime/default", "docker/default"):
        spec = build(tmp_path, rootfs, with_context(seccomp_profile_path=old))
        assert spec["linux"]["seccomp"] == new["linux"]["seccomp"]
    filt = new["linux"]["seccomp"]
    assert filt["defaultAction"] == "SCMP_ACT_ERRNO"  # an allowlist, as containerd's
    assert {"read", "openat", "execve", "socket", "wait4"} <= allowed(filt)
    assert not {"mount", "unshare", "setns", "keyctl", "reboot", "sethostname", "clone3"} & allowed(filt)


def allowed(profile: dict[str, Any], *, unconditionally: bool = False) -> set[str]:
    """The names an allow rule of ``profile`` lists (only those without argument checks, when
    ``unconditionally``)."""
    return {n for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
            and not (unconditionally and rule.get("args")) for n in rule["names"]}


def test_seccomp_default_follows_capabilities() -> None:
    plain = seccomp.default_profile(frozenset(DEFAULT_CAPABILITIES), "x86_64")
    admin = seccomp.default_profile(frozenset({*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_TIME"}), "x86_64")
    granted = {"mount", "unshare", "setns", "sethostname", "clone", "clone3", "settimeofday", "bpf"}
    assert granted <= allowed(admin, unconditionally=True)
    assert not granted & allowed(plain, unconditionally=True)
    assert not {"keyctl", "reboot", "init_module"} & (allowed(admin) | allowed(plain))
    assert {"arch_prctl", "modify_ldt"} <= allowed(plain)
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    clone3 = [r for r in plain["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    assert not [r for r in admin["syscalls"] if r["action"] != "SCMP_ACT_ALLOW"]
    # Without CAP_SYS_ADMIN, clone only when no namespace flag is set.
    (clone,) = [r for r in plain["syscalls"] if r["names"] == ["clone"]]
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    s390 = seccomp.default_profile(frozenset(DEFAULT_CAPABILITIES), "s390x")
    assert [r["args"][0]["index"] for r in s390["syscalls"] if r["names"] == ["clone"]] == [1]


def test_seccomp_unconfined_and_unset(tmp_path: Path, rootfs: Path) -> None:
    for config in (container(), with_context(seccomp_profile_path="unconfined"),
                   with_context(seccomp=profile(api.SecurityProfile.Unconfined))):
        assert "seccomp" not in build(tmp_path, rootfs, config)["linux"]


def test_seccomp_field_wins_over_deprecated_string(tmp_path: Path, rootfs: Path) -> None:
    config = with_context(seccomp=profile(api.SecurityProfile.Unconfined), seccomp_profile_path="runtime/default")
    assert "seccomp" not in build(tmp_path, rootfs, config)["linux"]


def test_seccomp_localhost(tmp_path: Path, rootfs: Path) -> None:
    path = tmp_path / "profile.json"
    document = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    path.write_text(json.dumps(document))
    for config in (with_context(seccomp=profile(api.SecurityProfile.Localhost, str(path))),
                   with_context(seccomp_profile_path=f"localhost/{path}")):
        assert build(tmp_path, rootfs, config)["linux"]["seccomp"] == document
    with pytest.raises(NotFound):
        build(tmp_path, rootfs, with_context(seccomp=profile(api.SecurityProfile.Localhost, str(tmp_path / "no"))))
    path.write_text("[1]")
    with pytest.raises(InvalidArgument):
        build(tmp_path, rootfs, with_context(seccomp_profile_path=f"localhost/{path}"))


def test_seccomp_invalid_forms(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="invalid seccomp profile"):
        build(tmp_path, rootfs, with_context(seccomp_profile_path="whatever"))
    with pytest.raises(InvalidArgument, match="localhost_ref"):
        build(tmp_path, rootfs, with_context(seccomp=profile(api.SecurityProfile.RuntimeDefault, "/x")))


def test_apparmor_is_ignored_unless_a_localhost_profile_is_demanded(tmp_path: Path, rootfs: Path) -> None:
    build(tmp_path, rootfs, with_context(apparmor=profile(api.SecurityProfile.RuntimeDefault)))
    build(tmp_path, rootfs, with_context(apparmor_profile="runtime/default"))
    with pytest.raises(InvalidArgument, match="apparmor is not supported"):
        build(tmp_path, rootfs, with_context(apparmor=profile(api.SecurityProfile.Localhost, "p")))
    with pytest.raises(InvalidArgument, match="apparmor is not supported"):
        build(tmp_path, rootfs, with_context(apparmor_profile="localhost/p"))
