"""The stock test images: a runnable busybox, a tricky multi-layer image, a large random one."""

from __future__ import annotations

import os

from ctrpy.testimage.model import (
    Entry,
    Image,
    Layer,
    RandomContent,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)

BUSYBOX_PATH = "/bin/busybox"

# Applets linked to /bin/busybox in the busybox image. All exist in Debian's busybox-static.
APPLETS = (
    "[", "ash", "awk", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df",
    "dirname", "du", "echo", "env", "expr", "false", "find", "free", "grep", "head", "hostname",
    "id", "kill", "ln", "ls", "md5sum", "mkdir", "mkfifo", "mknod", "mount", "mv", "nproc",
    "pidof", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq", "sh", "sha256sum",
    "sleep", "sort", "stat", "sync", "tail", "tee", "test", "timeout", "top", "touch", "tr",
    "true", "umount", "uname", "uniq", "usleep", "vi", "wc", "which", "whoami", "xargs", "yes",
)

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = b"root:x:0:\nnobody:x:65534:\n"


def _sorted(entries: list[Entry]) -> tuple[Entry, ...]:
    """Entries sorted by path, which puts every directory before its contents."""
    return tuple(sorted(entries, key=lambda e: e.path.split("/")))


def busybox_image(name: str = "docker.io/library/busybox:latest",
                  busybox: str = BUSYBOX_PATH) -> Image:
    """A one-layer image that runs: the host's static busybox plus applet symlinks, passwd and
    group files, and the usual empty directories. ``Cmd`` is ``["sh"]``.

    Raises FileNotFoundError if ``busybox`` is missing (install Debian's busybox-static).
    """
    if not os.path.isfile(busybox):
        raise FileNotFoundError(
            f"busybox_image needs a static busybox binary at {busybox}; "
            "install the Debian package busybox-static")
    with open(busybox, "rb") as f:
        binary = f.read()
    entries = [
        directory("/bin"),
        file("/bin/busybox", binary, mode=0o755),
        directory("/dev"),
        directory("/etc"),
        file("/etc/passwd", PASSWD),
        file("/etc/group", GROUP),
        directory("/proc"),
        directory("/root", mode=0o700),
        directory("/run"),
        directory("/sys"),
        directory("/tmp", mode=0o1777),
        directory("/var"),
    ]
    entries += [symlink(f"/bin/{applet}", "/bin/busybox") for applet in APPLETS]
    return Image(name, (Layer(_sorted(entries)),))


def multilayer_image(name: str = "docker.io/library/multilayer:latest") -> Image:
    """A three-layer image that exercises unpacking: whiteouts of files and directories, an
    opaque directory, a directory re-created after its whiteout, a file replaced by a
    directory, hard links, absolute, relative and dangling symlinks, a character device, a fifo,
    user xattrs, setuid and sticky modes, files owned by uid 1000, a non-ASCII name and a path
    longer than 100 bytes. Compare an unpacked copy with :func:`expected_tree`.
    """
    long_dir = "/data/long/" + "d" * 60
    base = [
        directory("/bin"),
        file("/bin/setuid-tool", b"#!/bin/sh\necho tool\n", mode=0o4755),
        file("/bin/setgid-tool", b"#!/bin/sh\necho gtool\n", mode=0o2711, gid=1000),
        directory("/data"),
        file("/data/hello.txt", b"hello, world\n"),
        hardlink("/data/hello-link", "/data/hello.txt"),
        symlink("/data/rel-link", "hello.txt"),
        symlink("/data/abs-link", "/etc/hostname"),
        symlink("/data/dangling", "/nowhere/at/all"),
        file("/data/empty", b""),
        file("/data/with space.txt", b"spaces\n"),
        file("/data/\u00fcn\u00efc\u00f6de.txt", "unicode \u2713\n".encode()),
        directory("/data/long"),
        directory(long_dir),
        file(long_dir + "/" + "f" * 80, b"long path\n"),
        file("/data/xattr.txt", b"has xattrs\n",
             xattrs={"user.x": b"hello", "user.other": b"1"}),
        file("/data/replaced", b"a file in layer 1\n"),
        fifo("/data/pipe", mode=0o640),
        directory("/dev"),
        chardev("/dev/testnull", 1, 3, mode=0o666),
        directory("/etc"),
        file("/etc/hostname", b"base\n"),
        file("/etc/removed.conf", b"goes away in layer 2\n"),
        file("/etc/group-writable", b"x\n", mode=0o664, gid=1000),
        directory("/home"),
        directory("/home/user", mode=0o750, uid=1000, gid=1000),
        file("/home/user/secret", b"s3cret\n", mode=0o600, uid=1000, gid=1000),
        directory("/opt"),
        directory("/opt/app"),
        file("/opt/app/keep.txt", b"keep\n"),
        directory("/opt/app/old"),
        file("/opt/app/old/a.txt", b"a\n"),
        directory("/opt/app/old/sub"),
        file("/opt/app/old/sub/b.txt", b"b\n"),
        directory("/tmp", mode=0o1777),
        directory("/var"),
        directory("/var/cache", mode=0o755),
        directory("/var/cache/x"),
        file("/var/cache/x/1.bin", b"\x00\x01\x02" * 100),
        file("/var/cache/y", b"y\n"),
    ]
    middle = [
        directory("/bin"),
        file("/bin/tool2", b"tool2\n", mode=0o750, uid=1000, gid=100),
        hardlink("/bin/tool2-link", "/bin/tool2"),
        hardlink("/bin/tool2-second", "/bin/tool2"),
        directory("/data"),
        directory("/data/replaced", mode=0o700),
        file("/data/replaced/inside", b"now a directory\n"),
        directory("/etc"),
        file("/etc/hostname", b"layer2\n"),
        whiteout("/etc/removed.conf"),
        directory("/home"),
        directory("/home/user", mode=0o700, uid=1000, gid=1000),
        directory("/opt"),
        directory("/opt/app"),
        whiteout("/opt/app/old"),
        directory("/var"),
        directory("/var/cache", mode=0o775),
        opaque("/var/cache"),
        file("/var/cache/new.txt", b"only this survives\n"),
    ]
    top = [
        directory("/bin"),
        whiteout("/bin/tool2-link"),
        directory("/home"),
        directory("/home/user", mode=0o700, uid=1000, gid=1000),
        file("/home/user/notes.txt", b"notes\n", mode=0o640, uid=1000, gid=1000),
        file("/home/user/nobody-owned", b"n\n", mode=0o444, uid=65534, gid=65534),
        directory("/opt"),
        directory("/opt/app"),
        directory("/opt/app/old", mode=0o711),
        file("/opt/app/old/new.txt", b"re-created\n"),
    ]
    # Layers keep this order (not sorted): hard links follow their targets.
    return Image(name, (Layer(tuple(base)), Layer(tuple(middle)), Layer(tuple(top))),
                 cmd=("/bin/setuid-tool",))


def large_image(total_bytes: int = 200 << 20, layers: int = 8, seed: int = 0,
                name: str = "docker.io/library/large:latest",
                file_size: int = 16 << 20, compresslevel: int = 0) -> Image:
    """An image of ``layers`` layers holding ``total_bytes`` of incompressible pseudo-random
    data in files of at most ``file_size`` bytes, for import benchmarks. The data is a pure
    function of ``seed``. Gzip level 0 (stored blocks) keeps building fast; random data would
    not shrink at any level.

    Raises ValueError if ``layers`` < 1 or ``total_bytes`` < 0.
    """
    if layers < 1 or total_bytes < 0 or file_size < 1:
        raise ValueError("large_image needs layers >= 1, total_bytes >= 0, file_size >= 1")
    per_layer, extra = divmod(total_bytes, layers)
    built: list[Layer] = []
    for index in range(layers):
        left = per_layer + (1 if index < extra else 0)
        entries = [directory("/data"), directory(f"/data/{index:03d}")]
        part = 0
        while left > 0:
            size = min(left, file_size)
            content = RandomContent(size, seed * 1_000_003 + index * 10_007 + part)
            entries.append(file(f"/data/{index:03d}/part-{part:04d}.bin", content))
            left -= size
            part += 1
        built.append(Layer(tuple(entries), compresslevel=compresslevel))
    return Image(name, tuple(built))
