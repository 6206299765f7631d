"""Cut this process off the network: a new network namespace that holds only loopback.

Children started afterwards (the Playwright driver, Chromium) inherit the namespace, so the built
site has to load from 127.0.0.1 alone; a CDN request fails as it would for an offline reader.
This is what `unshare --net` does, done in-process with the same system call (Python 3.11 has no
`os.unshare`). As root it needs nothing else; as another user it also needs a user namespace,
which the kernel may forbid (`kernel.unprivileged_userns_clone=0`, or AppArmor's
`kernel.apparmor_restrict_unprivileged_userns=1`).
"""

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH14s"  # struct ifreq: interface name, then ifr_flags


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare({flags:#x}) failed: {os.strerror(errno)}")


def _map_to_root(uid: int, gid: int) -> None:
    """Map our own ids to root inside the new user namespace (what `unshare -r` does)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(IFREQ, b"lo", 0, b"")
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP, b""))


def cut_network() -> None:
    """Enter a fresh network namespace with loopback up and no other interface.

    Call it before starting threads: a user namespace (needed when not root) can only be entered
    by a single-threaded process.

    Raises:
        OSError: the kernel refused the namespace, with the reason.
    """
    if os.geteuid() == 0:
        _unshare(CLONE_NEWNET)
    else:
        uid, gid = os.geteuid(), os.getegid()
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        _map_to_root(uid, gid)
    _bring_loopback_up()


def interfaces() -> list[str]:
    """Names of the network interfaces this process can see."""
    return [name for _, name in socket.if_nameindex()]
