"""This node's address and interface (every rule of megatron_tulu.engine.network), without a network."""

from __future__ import annotations

import random
import socket

import pytest

from megatron_tulu.engine.network import (
    configure_node_network,
    is_loopback,
    node_address,
    port_for_foreign_server,
)
from megatron_tulu.errors import UserError

# a node of a real cluster: loopback, Ethernet and InfiniBand
IFS = {"lo": ["127.0.0.1"], "eth0": ["10.0.0.5"], "ib0": ["192.168.7.5"]}
HOSTS = {"node0": "10.0.0.4", "node1": "10.0.0.5", "debian-node": "127.0.1.1"}


def probes(route: dict[str, str] | None = None):
    return dict(interfaces=IFS, resolve=HOSTS.get, route=(route or {"node0": "10.0.0.5"}).get)


def test_interface_name_wins_then_host_then_slurm_name_then_route():
    env = {"MEGATRON_TULU_IFNAME": "ib0", "SLURMD_NODENAME": "node1"}
    assert node_address("node0", env, **probes()).address == "192.168.7.5"
    node = node_address("node0", {"SLURMD_NODENAME": "node1"}, **probes(route={"node0": "192.168.7.5"}))
    assert (node.address, node.iface, node.source) == ("10.0.0.5", "eth0", "Slurm node name node1")
    node = node_address("node0", {}, **probes())
    assert (node.address, node.iface) == ("10.0.0.5", "eth0") and "route to MASTER_ADDR" in node.source
    assert node_address("node0", {"MEGATRON_TULU_HOST": "192.168.7.5"}, **probes()).iface == "ib0"


def test_one_host_value_for_every_node_is_refused():
    # the old sbatch exported node 0's address on every node: on node 1 it is not a local address
    with pytest.raises(UserError, match="MEGATRON_TULU_HOST=10.0.0.4 is not an address of this host"):
        node_address("node0", {"MEGATRON_TULU_HOST": "10.0.0.4"}, **probes())
    with pytest.raises(UserError, match="MEGATRON_TULU_IFNAME=ib1: no such interface.*ib0 \\(192.168.7.5\\)"):
        node_address("node0", {"MEGATRON_TULU_IFNAME": "ib1"}, **probes())


def test_loopback_address_in_a_multi_node_job_is_refused_with_the_fix():
    # Debian's /etc/hosts: the hostname resolves to 127.0.1.1 and there is no route answer
    env: dict[str, str] = {"SLURMD_NODENAME": "debian-node"}
    with pytest.raises(
        UserError, match="127.0.1.1 .* is loopback, but the job spans 4 nodes.*MEGATRON_TULU_IFNAME"
    ):
        configure_node_network(
            "node0", 4, env, interfaces=IFS, resolve=HOSTS.get, route=lambda _: "127.0.1.1"
        )
    # one node: loopback is fine
    configure_node_network("node0", 1, env, interfaces=IFS, resolve=HOSTS.get, route=lambda _: "127.0.1.1")


def test_simulated_nodes_on_one_host_keep_loopback():
    """MASTER_ADDR loopback: every node dials a loopback store, so all nodes are this host."""
    env: dict[str, str] = {"SLURMD_NODENAME": "n1"}
    node = configure_node_network(
        "n0", 2, env, interfaces=IFS, resolve={"n0": "127.0.0.2", "n1": "127.0.0.3"}.get, route=lambda _: None
    )
    assert node.address == "127.0.0.3" and node.iface == "lo"
    assert env["VLLM_HOST_IP"] == "127.0.0.3" and env["GLOO_SOCKET_IFNAME"] == "lo"


def test_gloo_nccl_and_vllm_get_this_nodes_interface():
    env: dict[str, str] = {"SLURMD_NODENAME": "node1", "NCCL_SOCKET_IFNAME": "ib0"}
    configure_node_network("node0", 2, env, **probes())
    assert env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["NCCL_SOCKET_IFNAME"] == "ib0"  # a site's own choice stays
    assert env["VLLM_HOST_IP"] == env["MEGATRON_TULU_HOST"] == "10.0.0.5"
    with pytest.raises(UserError, match="VLLM_HOST_IP=10.0.0.4 is not an address of this host"):
        configure_node_network("node0", 2, {"VLLM_HOST_IP": "10.0.0.4"}, **probes())


def test_is_loopback():
    assert is_loopback("127.0.1.1") and is_loopback("::1") and not is_loopback("10.0.0.1")
    assert not is_loopback("node0")  # a name is resolved by the caller


def test_foreign_server_ports_come_from_below_the_ephemeral_range_and_are_free():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    rng = random.Random(0)
    for _ in range(20):
        port = port_for_foreign_server("127.0.0.1", rng)
        assert port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free right after (nobody else took it)
