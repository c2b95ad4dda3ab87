"""The images the CRI validation suite (critest v1.36) pulls, built here under their upstream names.

critest pulls its images from ``registry.k8s.io``, ``k8s.gcr.io``, ``gcr.io`` and
``public.ecr.aws``; a machine without internet serves them from a loopback registry through
hosts.toml mirrors instead, so they must exist under the same repository paths and do what the
specs expect of them:

- a busybox whose applets are hard links to a *dynamic* busybox: the masked-path spec masks
  ``/bin/ls`` and expects ``/bin/sh: ls: Permission denied``; a static busybox runs applets
  inside the shell, so masking the file changes nothing;
- ``ipcs`` (util-linux) and ``pgrep`` (procps), which Debian's busybox lacks, with the shared
  libraries ``ldd`` names;
- ``/etc/passwd`` and ``/etc/group`` with root, www-data (33) and nobody (65534);
- an "httpd" image that serves port 80 and says ``httpd`` in its log;
- "nginx" images whose default command serves HTTP (busybox httpd) on port 80 (12003 for the
  host-network one) from a process named ``nginx`` whose pid is in ``/var/run/nginx.pid``, under
  a PID 1 whose command line says ``master process`` (the PID-namespace specs look for both);
- a nonewprivs image whose command prints ``Effective uid: N`` from a setuid-root ``id``;
- users and groups as the image-status and supplemental-group specs expect.

Every image carries a label with its upstream name, so images meant to differ never share an id
(several specs count tags per id); names meant to be one image (``test-image-tags:1..3``,
``pause:3.9`` from two registries) share one :class:`CritestImage`. The pause program is given by
the caller (``ctrpy.pause.pause_executable``), which keeps this package free of the rest of
ctrpy; the pause:3.9 image differs from ctrpy's own sandbox image by its label.

Builds are deterministic for the same host binaries.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ctrpy.testimage.model import Entry, Image, Layer, directory, file, hardlink, host_arch

LABEL = "io.ctrpy.critest.image"

E2E = "registry.k8s.io/e2e-test-images"
CRI_TOOLS = "gcr.io/k8s-staging-cri-tools"
ECR_BUSYBOX = "public.ecr.aws/docker/library/busybox"
#: The upstream registries critest pulls from; each needs a hosts.toml mirror.
UPSTREAM_HOSTS = ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws")

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
          b"www-data:x:33:33:www-data:/var/www:/bin/false\n"
          b"nobody:x:65534:65534:nobody:/home:/bin/false\n")
GROUP = (b"root:x:0:\n"
         b"daemon:x:1:\n"
         b"www-data:x:33:\n"
         b"users:x:100:\n"
         b"nogroup:x:65534:\n")
# test-image-predefined-group: default-user (1000) is also in group-defined-in-image (50000).
PREDEFINED_PASSWD = PASSWD + b"default-user:x:1000:1000::/home/default-user:/bin/sh\n"
PREDEFINED_GROUP = (GROUP + b"default-user:x:1000:\n"
                    b"group-defined-in-image:x:50000:default-user\n")

# PID 1 of the nginx images: a shell whose arguments say "master process", running busybox
# httpd from a copy of busybox called nginx (so its comm is "nginx"); SIGTERM stops both.
NGINX_SCRIPT = ("trap 'kill $! 2>/dev/null; exit 0' TERM INT; mkdir -p /var/run; "
                "(exec -a httpd /usr/sbin/nginx -f -p {port} -h /usr/share/nginx/html) & "
                "echo $! > /var/run/nginx.pid; wait")
# Apache logs its start-up on stderr; the multi-container log spec waits for "httpd" in the log.
HTTPD_SCRIPT = ("trap 'kill $! 2>/dev/null; exit 0' TERM INT; "
                "echo 'httpd: serving /usr/local/apache2/htdocs on port 80' >&2; "
                "httpd -f -p 80 -h /usr/local/apache2/htdocs & wait")
NNP_SCRIPT = 'echo "Effective uid: $(/usr/local/bin/euid -u)"'
INDEX_HTML = b"<html><body><h1>It works (ctrpy critest image)</h1></body></html>\n"


@dataclass(frozen=True)
class HostTools:
    """The host programs copied into the images, with the libraries ``ldd`` names for them.

    ``busybox`` should be Debian's dynamic busybox (package ``busybox``); a static one works
    for everything but the masked-path spec.
    """

    busybox: str
    ipcs: str = "/usr/bin/ipcs"
    pgrep: str = "/usr/bin/pgrep"
    id: str = "/usr/bin/id"


@dataclass(frozen=True)
class CritestImage:
    """One image and every upstream name it is pulled under (the first one is its label)."""

    image: Image
    names: tuple[str, ...]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def shared_libraries(binary: str) -> list[str]:
    """The absolute paths ``ldd`` lists for ``binary`` (loader included; empty when static).

    Raises FileNotFoundError if ``binary`` is missing.
    """
    if not os.path.isfile(binary):
        raise FileNotFoundError(f"{binary} is missing")
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:  # "not a dynamic executable"
        return []
    found = (_LDD_LINE.match(line) for line in result.stdout.splitlines())
    return sorted({match.group(1) for match in found if match})


def _parents(path: str) -> list[str]:
    out: list[str] = []
    parent = posixpath.dirname(path)
    while parent not in ("/", ""):
        out.append(parent)
        parent = posixpath.dirname(parent)
    return out


def _tree(files: dict[str, Entry], links: Iterable[Entry] = (),
          dirs: Iterable[Entry] = ()) -> Layer:
    """A layer of ``files`` (path -> entry) with every parent directory, sorted so that a
    directory precedes its contents, then the hard ``links`` (which follow their targets)."""
    entries: dict[str, Entry] = {entry.path: entry for entry in dirs}
    for path in list(files) + [link.path for link in links]:
        for parent in _parents(path):
            entries.setdefault(parent, directory(parent))
    entries.update(files)
    ordered = sorted(entries.values(), key=lambda e: e.path.split("/"))
    return Layer(tuple(ordered) + tuple(links))


def _libraries(binaries: Iterable[str]) -> dict[str, Entry]:
    """Each library of ``binaries`` as a file at the path ldd names (its target's bytes)."""
    out: dict[str, Entry] = {}
    for binary in binaries:
        for lib in shared_libraries(binary):
            out[lib] = file(lib, _read(os.path.realpath(lib)), mode=0o755)
    return out


def _applets(busybox: str) -> list[str]:
    result = subprocess.run([busybox, "--list"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=True)
    return sorted({name for name in result.stdout.split() if "/" not in name})


def base_layer(tools: HostTools) -> Layer:
    """The busybox root filesystem every critest image but pause starts from."""
    files = {
        "/bin/busybox": file("/bin/busybox", _read(tools.busybox), mode=0o755),
        "/usr/bin/ipcs": file("/usr/bin/ipcs", _read(tools.ipcs), mode=0o755),
        "/usr/bin/pgrep": file("/usr/bin/pgrep", _read(tools.pgrep), mode=0o755),
        "/etc/passwd": file("/etc/passwd", PASSWD),
        "/etc/group": file("/etc/group", GROUP),
    }
    files.update(_libraries((tools.busybox, tools.ipcs, tools.pgrep)))
    dirs = [directory(path) for path in ("/dev", "/etc", "/home", "/proc", "/sys", "/usr",
                                         "/var", "/var/run", "/var/www")]
    dirs += [directory("/root", mode=0o700), directory("/tmp", mode=0o1777)]
    links = [hardlink(f"/bin/{applet}", "/bin/busybox") for applet in _applets(tools.busybox)
             if applet != "busybox"]
    return _tree(files, links, dirs)


def _image(name: str, layers: tuple[Layer, ...], *, cmd: tuple[str, ...] = ("sh",),
           entrypoint: tuple[str, ...] = (), user: str = "", working_dir: str = "") -> Image:
    """An image labelled with its upstream name, so that no two critest images share an id."""
    return Image(name, layers, cmd=cmd, entrypoint=entrypoint, user=user, working_dir=working_dir,
                 labels=((LABEL, name),))


def _nginx(name: str, base: Layer, busybox: bytes, port: int) -> Image:
    layer = _tree({
        "/usr/sbin/nginx": file("/usr/sbin/nginx", busybox, mode=0o755),
        "/usr/share/nginx/html/index.html": file("/usr/share/nginx/html/index.html", INDEX_HTML),
    })
    return _image(name, (base, layer),
                  cmd=("/bin/sh", "-c", NGINX_SCRIPT.format(port=port), "nginx: master process"))


def _marker(name: str, base: Layer, marker: str) -> Image:
    """The base plus one empty file, as cri-tools' image-test Dockerfile makes (``ADD $TEST``)."""
    return _image(name, (base, _tree({f"/{marker}": file(f"/{marker}", b"")})))


def critest_images(tools: HostTools, pause: bytes) -> list[CritestImage]:
    """Every image critest v1.36 pulls, with the names it pulls each under.

    ``pause`` is the pause executable (``ctrpy.pause.pause_executable()``).
    Raises FileNotFoundError if a host tool is missing.
    """
    base = base_layer(tools)
    busybox = _read(tools.busybox)
    out: list[CritestImage] = []

    def add(image: Image, *more: str) -> None:
        out.append(CritestImage(image, (image.name, *more)))

    add(_image(f"{E2E}/busybox:1.29-2", (base,)))
    add(_nginx(f"{E2E}/nginx:1.14-2", base, busybox, 80))
    add(_nginx(f"{CRI_TOOLS}/hostnet-nginx-{host_arch()}:latest", base, busybox, 12003))
    httpd = _tree({"/usr/local/apache2/htdocs/index.html":
                   file("/usr/local/apache2/htdocs/index.html", INDEX_HTML)})
    add(_image(f"{E2E}/httpd:2.4.39-4", (base, httpd), cmd=("/bin/sh", "-c", HTTPD_SCRIPT)))
    nnp = _tree({"/usr/local/bin/euid": file("/usr/local/bin/euid", _read(tools.id), mode=0o4755),
                 **_libraries((tools.id,))})
    add(_image(f"{E2E}/nonewprivs:1.3", (base, nnp), cmd=("/bin/sh", "-c", NNP_SCRIPT)))
    pause_layer = Layer((file("/pause", pause, mode=0o755),))
    add(_image("registry.k8s.io/pause:3.9", (pause_layer,), cmd=(), entrypoint=("/pause",),
               user="65535:65535", working_dir="/"), "k8s.gcr.io/pause:3.9")
    for index in ("1", "2", "3", "latest"):
        add(_marker(f"{CRI_TOOLS}/test-image-{index}:latest", base, f"test-image-{index}"))
    add(_marker(f"{CRI_TOOLS}/test-image-tags:1", base, "same-image"),
        f"{CRI_TOOLS}/test-image-tags:2", f"{CRI_TOOLS}/test-image-tags:3")
    for tag in ("test", "all"):
        add(_marker(f"{CRI_TOOLS}/test-image-tag:{tag}", base, tag))
    for suffix, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:1004"),
                         ("username-group", "www-data:1004")):
        add(_image(f"{CRI_TOOLS}/test-image-user-{suffix}:latest", (base,), user=user))
    predefined = _tree({"/etc/passwd": file("/etc/passwd", PREDEFINED_PASSWD),
                        "/etc/group": file("/etc/group", PREDEFINED_GROUP)},
                       dirs=[directory("/home/default-user", uid=1000, gid=1000)])
    add(_image(f"{CRI_TOOLS}/test-image-predefined-group:latest", (base, predefined), user="1000"))
    for tag in ("1", "1-glibc", "1-musl", "1-uclibc", "1.35.0-glibc"):
        add(_image(f"{ECR_BUSYBOX}:{tag}", (base,)))
    return out


def repository_path(name: str) -> str:
    """Where a mirror serves ``name``: the reference without its registry host
    (``registry.k8s.io/pause:3.9`` -> ``pause:3.9``)."""
    host, _, rest = name.partition("/")
    if not rest or host not in UPSTREAM_HOSTS:
        raise ValueError(f"{name!r} is not under one of {UPSTREAM_HOSTS}")
    return rest
