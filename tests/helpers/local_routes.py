"""Would the kernel keep a packet for this address on the machine? (`ip route get`, read for tests.)

On the machine: no route at all (unreachable/blackhole/prohibit: connect fails
at once), a local address, loopback, or a virtual device made here (a test's
bridge or veth, none of whose ports is a physical NIC) reached without a
gateway. Anything with a `via` gateway or out of a physical interface leaves.
"""

from __future__ import annotations

import os
import re
import subprocess

_SYS_NET = "/sys/class/net"


def _virtual(dev: str) -> bool:
    return "/devices/virtual/" in os.path.realpath(os.path.join(_SYS_NET, dev))


def _stays_on_device(dev: str) -> bool:
    if not _virtual(dev):
        return False
    ports_dir = os.path.join(_SYS_NET, dev, "brif")
    ports = os.listdir(ports_dir) if os.path.isdir(ports_dir) else []
    return all(_virtual(p) for p in ports)


def route_is_local(address: str) -> bool:
    """True when a connection to `address` cannot leave this machine (see the module docstring)."""
    out = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
    if out.returncode != 0:
        err = out.stderr.lower()
        return "unreachable" in err or "no route" in err or "prohibited" in err
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if first.startswith(("local ", "unreachable", "blackhole", "prohibit")):
        return True
    dev = re.search(r"\bdev (\S+)", first)
    return dev is not None and " via " not in f" {first} " and (dev.group(1) == "lo" or _stays_on_device(dev.group(1)))
