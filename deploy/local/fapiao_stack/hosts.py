"""Hosts on one machine: Linux network namespaces joined by a bridge, and the faults of their network.

Each host is a network namespace `PREFIX + name` (`fapiao-kafka-1`, ...) with its loopback up and one
interface, eth0, holding its address in the cluster's subnet (FAPIAO_CLUSTER_SUBNET, default
10.231.0.0/24). The other end of every host's veth pair is a port of one bridge that lives in a
namespace of its own, `PREFIX + "switch"`: the machine's own (root) namespace gets no interface on
it, only an `unreachable` route for the subnet (removed by `down`), so the cluster's addresses are
reachable only from its hosts and nothing sent to them from the machine leaves it. A
process runs on a host when started with `netns_launcher(namespace)` (`ip netns exec NAMESPACE ...`);
the root namespace reaches a host through `run_in_netns` (one thread joined to the namespace).

Faults, each bounded and undone by `heal_all` (and by `down`):
- `isolate(host)`: the host's switch port goes down, as a pulled cable: every packet to or from the
  host is dropped, its own loopback keeps working. `heal(host)` brings the port back.
- `cut(group_a, group_b)`: a blackhole route to each address of the other side, in every host of both
  sides: neither side reaches the other (new connections fail, established ones stall), each side
  still reaches everything else.

`up` is idempotent; `down` stops whatever still runs in the namespaces and deletes every namespace
with the prefix, whatever state a crashed run left behind. Root is required (CAP_NET_ADMIN and
CAP_SYS_ADMIN for `ip netns`).
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fapiao_stack.procs import pid_alive

DEFAULT_SUBNET = "10.231.0.0/24"
DEFAULT_PREFIX = "fapiao-"
SWITCH = "switch"
BRIDGE = "br0"
NETNS_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_IP_TIMEOUT_S = 20.0

T = TypeVar("T")


class HostsError(RuntimeError):
    """An `ip` command failed, or namespaces are not available on this machine."""


def netns_available() -> tuple[bool, str]:
    """(True, "") when this process can create network namespaces; else (False, the reason)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is missing"
    probe = f"{DEFAULT_PREFIX}probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    if made.returncode != 0:
        return False, f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=_IP_TIMEOUT_S)
    return True, ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    if check and done.returncode != 0:
        raise HostsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_launcher(namespace: str) -> list[str]:
    """The argv prefix that runs a program inside `namespace`."""
    return ["ip", "netns", "exec", namespace]


_libc: ctypes.CDLL | None = None


def _setns(namespace: str) -> None:
    """Join the calling thread to network namespace `namespace` (for good: call it in a fresh thread)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(namespace: str, fn: Callable[..., T], *args: object) -> T:
    """Call `fn(*args)` in a new thread joined to `namespace`; return its result or raise its exception.

    Sockets the call opens belong to the namespace (asyncio included: `run_in_netns(ns, asyncio.run,
    coro)`); the calling thread stays where it is."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(namespace)
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def port_open_in(namespace: str, host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when `host:port` accepts a TCP connection made from inside `namespace`."""
    import socket

    def connect() -> bool:
        with socket.socket() as sock:
            sock.settimeout(timeout_s)
            return sock.connect_ex((host, port)) == 0

    return run_in_netns(namespace, connect)


def subnet_from_env() -> str:
    return os.environ.get("FAPIAO_CLUSTER_SUBNET", "") or DEFAULT_SUBNET


def prefix_from_env() -> str:
    return os.environ.get("FAPIAO_CLUSTER_PREFIX", "") or DEFAULT_PREFIX


@dataclass(frozen=True)
class Network:
    """The hosts of one cluster: namespaces `prefix + name`, addresses in `subnet`.

    A host is placed at a fixed offset in the subnet (`up({"kafka-1": 11, ...})`: 10.231.0.11), so
    its address is the same after every `up`, and its switch port is named after the offset.
    """

    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET

    def __post_init__(self) -> None:
        network = ipaddress.ip_network(self.subnet)
        if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
            raise ValueError(f"the cluster subnet must be a private IPv4 network, got {self.subnet!r}")
        if network.num_addresses < 4:
            raise ValueError(f"the cluster subnet {self.subnet} is too small")

    @property
    def switch(self) -> str:
        return self.prefix + SWITCH

    def namespace(self, host: str) -> str:
        return self.prefix + host

    def address(self, offset: int) -> str:
        """The address at `offset` in the subnet (neither the network nor the broadcast address)."""
        network = ipaddress.ip_network(self.subnet)
        if not 0 < offset < network.num_addresses - 1:
            raise ValueError(f"offset {offset} is outside the hosts of {self.subnet}")
        return str(network.network_address + offset)

    def launcher(self, host: str) -> list[str]:
        return netns_launcher(self.namespace(host))

    # -- the namespaces ---------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """Every existing namespace of this cluster (the switch included): those named with its prefix,
        but for another cluster's whose prefix extends it (`fapiao-` and `fapiao-t1-` are two clusters:
        each has its switch, `fapiao-switch` and `fapiao-t1-switch`)."""
        done = _ip("netns", "list", check=False)
        names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
        others = [
            name.removesuffix(SWITCH)
            for name in names
            if name.endswith(SWITCH) and name != self.switch and name.startswith(self.prefix)
        ]
        return [name for name in names if name.startswith(self.prefix) and not any(name.startswith(o) for o in others)]

    def hosts(self) -> dict[str, str]:
        """Host name -> address of every host that exists now."""
        found = {}
        for namespace in self.namespaces():
            if namespace == self.switch:
                continue
            address = self._host_address(namespace)
            if address is not None:
                found[namespace.removeprefix(self.prefix)] = address
        return found

    def _host_address(self, namespace: str) -> str | None:
        done = _ip("-j", "-n", namespace, "-4", "addr", "show", "dev", "eth0", check=False)
        if done.returncode != 0 or not done.stdout.strip():
            return None
        for link in json.loads(done.stdout):
            for info in link.get("addr_info", []):
                return str(info["local"])
        return None

    def _port(self, host: str, address: str | None = None) -> str:
        """The switch port of `host` (named after its offset in the subnet)."""
        if address is None:
            address = self._host_address(self.namespace(host))
        if address is None:
            raise HostsError(f"no host {host!r} in {self.prefix}* (is the cluster up?)")
        offset = int(ipaddress.ip_address(address)) - int(ipaddress.ip_network(self.subnet).network_address)
        return f"p{offset}"

    def up(self, hosts: Mapping[str, int]) -> dict[str, str]:
        """Create the switch and every host (name -> offset) that does not exist yet; return name -> address."""
        existing = set(self.namespaces())
        # The machine's own namespace would send packets for the subnet out of its default route: an
        # unreachable route keeps them on this machine (connecting from there fails at once).
        _ip("route", "replace", "unreachable", self.subnet)
        if self.switch not in existing:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "set", "lo", "up")
        if _ip("-n", self.switch, "link", "show", BRIDGE, check=False).returncode != 0:
            _ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.switch, "link", "set", BRIDGE, "up")
        prefix_len = ipaddress.ip_network(self.subnet).prefixlen
        addresses = {}
        for host, offset in hosts.items():
            namespace = self.namespace(host)
            address = self.address(offset)
            port = f"p{offset}"
            if namespace not in existing:
                _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            if _ip("-n", namespace, "link", "show", "eth0", check=False).returncode != 0:
                _ip("-n", self.switch, "link", "del", port, check=False)
                _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.switch, "link", "set", port, "master", BRIDGE)
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "replace", f"{address}/{prefix_len}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            addresses[host] = address
        return addresses

    def down(self, grace_s: float = 10.0) -> list[str]:
        """Stop every process still running in a namespace of the cluster, then delete the namespaces."""
        namespaces = self.namespaces()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for namespace in namespaces for pid in self.pids(namespace)]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + grace_s
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                time.sleep(0.2)
        for namespace in namespaces:
            if namespace != self.switch:
                _ip("netns", "del", namespace, check=False)
        if self.switch in namespaces:
            _ip("netns", "del", self.switch, check=False)
        if not self._subnet_used_elsewhere():
            _ip("route", "del", "unreachable", self.subnet, check=False)
        return namespaces

    def _subnet_used_elsewhere(self) -> bool:
        """Whether a host of another cluster still has an address in this cluster's subnet."""
        subnet = ipaddress.ip_network(self.subnet)
        done = _ip("netns", "list", check=False)
        for line in done.stdout.splitlines():
            name = line.split()[0] if line.strip() else ""
            address = self._host_address(name) if name and not name.endswith(SWITCH) else None
            if address is not None and ipaddress.ip_address(address) in subnet:
                return True
        return False

    def pids(self, namespace: str) -> list[int]:
        done = _ip("netns", "pids", namespace, check=False)
        return [int(word) for word in done.stdout.split() if word.isdigit()]

    # -- faults -----------------------------------------------------------------------------------

    def isolate(self, host: str) -> None:
        """Cut `host` off from every other host (its switch port down); its loopback still works."""
        _ip("-n", self.switch, "link", "set", self._port(host), "down")

    def heal(self, host: str) -> None:
        """Undo `isolate(host)`."""
        _ip("-n", self.switch, "link", "set", self._port(host), "up")

    def cut(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """No traffic between any host of `group_a` and any host of `group_b`, both ways."""
        addresses = self.hosts()
        side_a, side_b = list(group_a), list(group_b)
        for name in (*side_a, *side_b):
            if name not in addresses:
                raise HostsError(f"no host {name!r} in {self.prefix}* (is the cluster up?)")
        if set(side_a) & set(side_b):
            raise ValueError(f"a host cannot be on both sides of a cut: {sorted(set(side_a) & set(side_b))}")
        for here, there in ((side_a, side_b), (side_b, side_a)):
            for host in here:
                for other in there:
                    _ip("-n", self.namespace(host), "route", "replace", "blackhole", f"{addresses[other]}/32")

    def blackholes(self, host: str) -> list[str]:
        """The addresses `host` cannot reach because of a cut."""
        done = _ip("-j", "-n", self.namespace(host), "route", "show", "type", "blackhole", check=False)
        if done.returncode != 0 or not done.stdout.strip():
            return []
        return [str(route["dst"]).removesuffix("/32") for route in json.loads(done.stdout)]

    def isolated(self) -> list[str]:
        """The hosts whose switch port is down."""
        down = []
        for host, address in self.hosts().items():
            done = _ip("-j", "-n", self.switch, "link", "show", self._port(host, address), check=False)
            if done.returncode == 0 and "UP" not in json.loads(done.stdout)[0].get("flags", []):
                down.append(host)
        return down

    def heal_all(self) -> None:
        """Every switch port up and every blackhole route removed: the network as `up` left it."""
        for host, address in self.hosts().items():
            _ip("-n", self.switch, "link", "set", self._port(host, address), "up", check=False)
            _ip("-n", self.namespace(host), "route", "flush", "type", "blackhole", check=False)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, ours reaped by pid_alive or another's, counts as gone)."""
    if not pid_alive(pid):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


_USAGE = """usage: python -m fapiao_stack.hosts COMMAND   (namespaces FAPIAO_CLUSTER_PREFIX*, default fapiao-*)
  list                      every host, its address, and the faults in force
  isolate HOST              HOST's link down
  heal HOST                 HOST's link up
  cut HOST,HOST HOST,HOST   no traffic between the two groups, both ways
  heal-all                  every link up, every cut removed"""


def main(argv: list[str]) -> int:
    network = Network(prefix=prefix_from_env(), subnet=subnet_from_env())
    command, args = (argv[0], argv[1:]) if argv else ("list", [])
    try:
        if command == "list" and not args:
            isolated = set(network.isolated())
            for host, address in sorted(network.hosts().items(), key=lambda item: ipaddress.ip_address(item[1])):
                cut = network.blackholes(host)
                faults = ("isolated " if host in isolated else "") + (f"cut from {', '.join(cut)}" if cut else "")
                print(f"{host:<16} {address:<15} {faults}".rstrip())
        elif command == "isolate" and len(args) == 1:
            network.isolate(args[0])
        elif command == "heal" and len(args) == 1:
            network.heal(args[0])
        elif command == "cut" and len(args) == 2:
            network.cut(args[0].split(","), args[1].split(","))
        elif command == "heal-all" and not args:
            network.heal_all()
        else:
            print(_USAGE)
            return 2
    except (HostsError, ValueError) as exc:
        print(f"hosts: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
