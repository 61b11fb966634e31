"""A Redis Cluster on loopback for the tests: 3 masters and 3 replicas, each a child process
(Debian's redis-server with ``--cluster-enabled yes``, joined by ``redis-cli --cluster create``;
../shared/docs/INFRA.md). The groundwork of the issue "State on a Redis Cluster": the store's
integration and failover tests are to run against it as well."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from daemon.embedded import Server, port_is_free, redis_binary

NODES, REPLICAS = 6, 1
BUS_OFFSET = 10_000  # a node's cluster bus listens at its port + 10000, which must be free too


@dataclass
class Cluster:
    nodes: list[Server]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def client(self, **kwargs) -> RedisCluster:  # type: ignore[no-untyped-def]
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports],
                            **kwargs)

    def node(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    def roles(self) -> dict[int, str]:
        """Port -> master or slave, as the cluster sees it from a live node."""
        for n in self.nodes:
            if n.process.poll() is None:
                nodes = redis.Redis(port=n.port, decode_responses=True).cluster("nodes")
                return {int(address.split(":")[1].split("@")[0]):
                        "master" if "master" in node["flags"] else "slave"
                        for address, node in nodes.items()
                        if "fail" not in node["flags"] and "noaddr" not in node["flags"]}
        return {}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def cluster_ports(n: int) -> list[int]:
    """n loopback ports whose bus ports (+10000) are free as well."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(20_000, 55_000)
        if p not in ports and port_is_free("127.0.0.1", p) and \
                port_is_free("127.0.0.1", p + BUS_OFFSET):
            ports.append(p)
    return ports


def wait_until_ok(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for p in ports:
            try:
                info = redis.Redis(port=p, decode_responses=True).cluster("info")
                states.append(info.get("cluster_state") == "ok")
            except redis.RedisError:
                states.append(False)
        if all(states):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster on {ports} is not ok after {timeout} s")
        time.sleep(0.1)


def start_cluster(workdir: Path, node_timeout_ms: int = 2000) -> Cluster:
    """Six nodes, slots spread over three masters, one replica each; a master unreachable for
    ``node_timeout_ms`` is failed over to its replica."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("no redis-cli: install Debian's redis-tools")
    nodes: list[Server] = []
    try:
        for port in cluster_ports(NODES):
            folder = workdir / f"node-{port}"
            folder.mkdir(parents=True)
            argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(port),
                    "--dir", str(folder), "--save", "", "--appendonly", "yes",
                    "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms)]
            nodes.append(Server("redis-cluster", argv, port, workdir=str(folder),
                                log_path=folder / "redis.log"))
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                        "--cluster-replicas", str(REPLICAS), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_until_ok([n.port for n in nodes])
        cluster = Cluster(nodes)
        deadline = time.monotonic() + 30  # the replicas' roles reach every node by gossip
        while sorted(cluster.roles().values()) != ["master"] * 3 + ["slave"] * 3:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no 3 masters and 3 replicas: {cluster.roles()}")
            time.sleep(0.1)
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return cluster
