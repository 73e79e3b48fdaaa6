"""Which address and interface this node's ranks use, and ports for servers.

Every node of a multi-node job must publish an address the *other* nodes reach, and gloo, NCCL and
vLLM must each bind to that same interface. On real clusters the defaults go wrong in known ways:
Debian's ``/etc/hosts`` maps the hostname to 127.0.1.1; gloo falls back to loopback when the
hostname does not resolve and ``GLOO_SOCKET_IFNAME`` is unset; vLLM's multi-node executor uses its
own ``get_ip()`` unless ``VLLM_HOST_IP`` is set; a ``MEGATRON_TULU_HOST`` exported by a batch script
is the same on every node. :func:`configure_node_network` decides once per rank, before any process
group exists, and exports the answer to the rank and the processes it starts (vLLM's workers):

1. ``MEGATRON_TULU_IFNAME`` -- an interface name (``ib0``, ``eth0``): its IPv4 address;
2. ``MEGATRON_TULU_HOST`` -- an address, accepted only if it belongs to this host;
3. ``SLURMD_NODENAME`` -- the address this node's Slurm name resolves to, if it is this host's;
4. this host's source address on the route to ``MASTER_ADDR`` (the store every node reaches);
5. this host's resolved name.

then sets ``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME`` (unless already set), ``VLLM_HOST_IP`` and
``MEGATRON_TULU_HOST``. A job spanning several nodes whose address is loopback is refused with one
``error:`` line -- unless ``MASTER_ADDR`` is loopback too: then every node dials a loopback store,
so all "nodes" are this one host (the simulated multi-node runs of the tests).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from megatron_tulu.errors import UserError

__all__ = [
    "NodeAddress",
    "configure_node_network",
    "is_loopback",
    "node_address",
    "port_for_foreign_server",
]


@dataclass(frozen=True)
class NodeAddress:
    address: str
    iface: str | None  # the interface holding ``address`` (None: not found among this host's)
    source: str  # how it was chosen, for error messages


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _resolve(name: str) -> str | None:
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None


def _route_to(target: str) -> str | None:
    """This host's source address for packets to ``target`` (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def _interfaces() -> dict[str, list[str]]:
    """IPv4 addresses of this host by interface name."""
    import psutil

    return {
        name: [a.address for a in addrs if a.family == socket.AF_INET]
        for name, addrs in psutil.net_if_addrs().items()
    }


def _iface_of(address: str, interfaces: Mapping[str, list[str]]) -> str | None:
    for name, addrs in interfaces.items():
        if address in addrs:
            return name
    if is_loopback(address):  # 127.0.0.2 etc. are served by the loopback interface
        return next((n for n, addrs in interfaces.items() if any(is_loopback(a) for a in addrs)), None)
    return None


def _is_local(address: str, interfaces: Mapping[str, list[str]]) -> bool:
    return is_loopback(address) or any(address in addrs for addrs in interfaces.values())


def node_address(
    master_addr: str,
    env: Mapping[str, str],
    *,
    interfaces: Mapping[str, list[str]] | None = None,
    resolve: Callable[[str], str | None] = _resolve,
    route: Callable[[str], str | None] = _route_to,
) -> NodeAddress:
    """This node's address by the order of the module docstring (pure given its inputs)."""
    ifs = _interfaces() if interfaces is None else interfaces
    name = env.get("MEGATRON_TULU_IFNAME")
    if name:
        if name not in ifs or not ifs[name]:
            have = ", ".join(f"{n} ({'/'.join(a) or 'no IPv4'})" for n, a in sorted(ifs.items()))
            raise UserError(
                f"MEGATRON_TULU_IFNAME={name}: no such interface with an IPv4 address here; have {have}"
            )
        return NodeAddress(ifs[name][0], name, f"MEGATRON_TULU_IFNAME={name}")
    host = env.get("MEGATRON_TULU_HOST")
    if host:
        if not _is_local(host, ifs):
            raise UserError(
                f"MEGATRON_TULU_HOST={host} is not an address of this host ({socket.gethostname()}); "
                "it must differ per node (a batch script that exports one value gives every node the "
                "first node's address): set MEGATRON_TULU_IFNAME to the interface the nodes share instead"
            )
        return NodeAddress(host, _iface_of(host, ifs), f"MEGATRON_TULU_HOST={host}")
    slurm_name = env.get("SLURMD_NODENAME")
    if slurm_name:
        addr = resolve(slurm_name)
        if addr and _is_local(addr, ifs):
            return NodeAddress(addr, _iface_of(addr, ifs), f"Slurm node name {slurm_name}")
    addr = route(master_addr)
    if addr:
        return NodeAddress(addr, _iface_of(addr, ifs), f"the route to MASTER_ADDR={master_addr}")
    own = socket.gethostname()
    addr = resolve(own) or own
    return NodeAddress(addr, _iface_of(addr, ifs), f"this host's name {own}")


def configure_node_network(
    master_addr: str,
    nodes: int,
    env: MutableMapping[str, str] | None = None,
    **probes,
) -> NodeAddress:
    """Choose this node's address (see the module docstring), refuse a loopback address in a
    multi-node job on several hosts, and export it for gloo, NCCL and vLLM. ``probes`` replace the
    host lookups in tests (``interfaces``, ``resolve``, ``route``)."""
    env = os.environ if env is None else env
    ifs = probes.pop("interfaces", None)
    ifs = _interfaces() if ifs is None else ifs
    node = node_address(master_addr, env, interfaces=ifs, **probes)
    master_ip = probes.get("resolve", _resolve)(master_addr) or master_addr
    if nodes > 1 and is_loopback(node.address) and not is_loopback(master_ip):
        raise UserError(
            f"this node's address {node.address} (from {node.source}) is loopback, but the job spans "
            f"{nodes} nodes and its store is at MASTER_ADDR={master_addr} ({master_ip}): the other nodes "
            "could not reach this one (Debian's /etc/hosts maps the hostname to 127.0.1.1); set "
            "MEGATRON_TULU_IFNAME to the interface the nodes share (e.g. eth0, ib0)"
        )
    vllm_ip = env.get("VLLM_HOST_IP")
    if vllm_ip and not _is_local(vllm_ip, ifs):
        raise UserError(
            f"VLLM_HOST_IP={vllm_ip} is not an address of this host; it must differ per node: unset it "
            "(it is derived from this node's address) or set MEGATRON_TULU_IFNAME"
        )
    if node.iface:
        env.setdefault("GLOO_SOCKET_IFNAME", node.iface)
        env.setdefault("NCCL_SOCKET_IFNAME", node.iface)
    env["VLLM_HOST_IP"] = vllm_ip or node.address
    env["MEGATRON_TULU_HOST"] = node.address
    return node


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def port_for_foreign_server(host: str = "", rng: random.Random | None = None) -> int:
    """A port for a server another library binds later (vLLM's multi-node master, a refit store).

    Servers of ours bind port 0 and publish what they got, holding it (no race). For a server we
    cannot hold the socket of, the port comes from *below* the kernel's ephemeral range and is
    checked free now: outgoing connections take their source ports from the ephemeral range, so
    between this check and the other library's bind only another explicit bind of the very same
    port could take it (and that bind's error names the port)."""
    rng = rng or random.SystemRandom()
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = rng.randrange(floor, low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {floor}-{low - 1} on {host or 'this host'} after 200 tries")
