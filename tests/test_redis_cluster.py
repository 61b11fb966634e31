"""The Redis Cluster fixture (tests/redis_cluster.py) is a real cluster: slots over three
masters with a replica each, redis-py's cluster client reaching every slot, and a master killed
with SIGKILL replaced by its replica while the client rides through."""

from __future__ import annotations

import time

import pytest
import redis
from redis.exceptions import ClusterDownError

from tests.redis_cluster import start_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    c = start_cluster(tmp_path)
    yield c
    c.stop()


def test_three_masters_with_a_replica_each_serve_every_slot(cluster):
    roles = cluster.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    client = cluster.client()
    for i in range(300):  # keys in slots of every master
        client.set(f"k{i}", i)
    assert [int(client.get(f"k{i}")) for i in range(300)] == list(range(300))
    slots = {client.keyslot(f"k{i}") for i in range(300)}
    owners = {client.get_node_from_key(f"k{i}").port for i in range(300)}
    assert len(slots) > 200 and len(owners) == 3


def test_a_killed_master_is_replaced_by_its_replica_and_the_client_rides_through(cluster):
    client = cluster.client()
    master = client.get_node_from_key("survivor")
    # written on the key's master and acknowledged by its replica (WAIT counts the replicas
    # that have this connection's writes) before the kill: what a failover must not lose
    pipe = redis.Redis(port=master.port).pipeline(transaction=False)
    pipe.set("survivor", "yes")
    pipe.execute_command("WAIT", 1, 10_000)
    assert pipe.execute()[1] >= 1
    cluster.node(master.port).kill()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert client.get("survivor") == b"yes"
            break
        except (redis.ConnectionError, ClusterDownError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert client.get_node_from_key("survivor").port != master.port
    assert list(cluster.roles().values()).count("master") == 3
