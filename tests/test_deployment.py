"""The container files name settings the node really has (no Docker engine runs here: checked as data)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from quicnprotochat.server.config import ENV_PREFIX, NodeConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {field.name for field in dataclasses.fields(NodeConfig)}


def _setting(variable: str) -> str:
    assert variable.startswith(ENV_PREFIX), variable
    return variable.removeprefix(ENV_PREFIX).lower()


def test_compose_runs_two_nodes_on_one_database() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    nodes = [name for name, service in services.items() if service.get("build") == "."]
    assert len(nodes) >= 2
    stores = set()
    for name in nodes:
        environment = services[name]["environment"]
        assert {_setting(variable) for variable in environment} <= FIELDS
        stores.add(environment["QPC_SERVER_STORE"])
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(stores) == 1 and next(iter(stores)).startswith("postgresql://")
    assert "healthcheck" in services["postgres"]
    assert len({tuple(services[name]["volumes"]) for name in nodes}) == len(nodes)  # an identity per node


def test_dockerfile_settings_load() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    environment = dict(re.findall(r"(QPC_SERVER_[A-Z_]+)=(\S+)", dockerfile))
    assert environment
    config = load_config(environ=environment)
    assert config.quic_listen == "0.0.0.0:7700"
    assert "qpc-server" in dockerfile and "HEALTHCHECK" in dockerfile
