"""The container deployment (Dockerfile, compose.yaml, deploy/haproxy.cfg), as
far as it can be tested on a machine without Docker: the compose topology is
consistent with itself and with the image, HAProxy accepts the configuration,
and scripts/cluster.py runs that topology (the same HAProxy file, as many
nodes as compose has) on loopback.  The image's install steps run in
tests/test_packaging.py.  docs/deploy.md#containers says what was not run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.services import require_haproxy

ROOT = Path(__file__).resolve().parent.parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def node_services(doc: dict) -> dict:
    return {name: s for name, s in doc["services"].items() if name.startswith("node")}


def test_the_compose_topology_holds_together():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"postgres", "redis", "migrate", "node1", "node2", "haproxy"}
    nodes = node_services(doc)
    store = services["migrate"]["environment"]["TIDINGS_STORE"]
    assert store.startswith("postgresql://") and services["migrate"]["command"] == ["migrate"]
    for name, node in nodes.items():
        env = node["environment"]
        assert env["TIDINGS_STORE"] == store  # the store the migration ran on
        assert env["TIDINGS_BROKER"].startswith("redis://redis:")
        assert env["TIDINGS_NODE"] == name
        assert node["read_only"] is True and node["volumes"] == [f"{name}-data:/var/lib/tidings"]
        assert node["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # HAProxy's servers are the node services, on the port the image listens on
    cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+) check$", cfg, re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    port = re.search(r"TIDINGS_PORT=(\d+)", dockerfile).group(1)
    assert [(n, host, p) for n, host, p in servers] == [(n, n, port) for n in nodes]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in \
        services["haproxy"]["volumes"]
    # the image: not root, data in the volume, a health check on /readyz
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert 'VOLUME ["/var/lib/tidings"]' in dockerfile
    assert "TIDINGS_DATA=/var/lib/tidings/data" in dockerfile
    assert re.search(r"^HEALTHCHECK .*/readyz", dockerfile, re.M)


def test_haproxy_accepts_the_configuration(tmp_path):
    from scripts.cluster import Cluster

    binary = require_haproxy()
    cluster = Cluster("postgresql://unused", "redis://unused", nodes=2, workdir=tmp_path)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(cluster.haproxy_config())
    r = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # every setting of the compose file's HAProxy is in the one the tests run
    ours = {line.strip() for line in cfg.read_text().splitlines()}
    for line in (ROOT / "deploy" / "haproxy.cfg").read_text().splitlines():
        word = line.split()[:1]
        if word and word[0] not in ("server", "bind", "maxconn", "#"):
            assert line.strip() in ours, line


def test_the_compose_topology_on_loopback(make_cluster):
    cluster = make_cluster(nodes=len(node_services(compose())))
    app = cluster.create_app("compose")
    auth = {"Authorization": f"Bearer {app['api_key']}"}
    with httpx.Client(base_url=cluster.url, timeout=10) as http:
        assert http.get("/readyz").json()["ready"] is True
        for i in range(4):  # through HAProxy, to whichever node
            r = http.post("/v1/notifications", headers=auth,
                          json={"to": {"users": ["ann"]}, "title": f"n{i}"})
            assert r.status_code == 202, r.text
        token = http.post("/v1/users/ann/tokens", headers=auth, json={"ttl": 60}).json()["token"]
        counts = http.get("/v1/me/counts", headers={"Authorization": f"Bearer {token}"})
        assert counts.json() == {"unread": 4, "unseen": 4, "at": {"seq": 4, "feed": 0, "rev": 0}}
