"""Node settings: precedence, types and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicnprotochat.server.config import ConfigError, load_config


def test_defaults_work_alone(tmp_path: Path) -> None:
    config = load_config(environ={}, overrides={"data_dir": tmp_path})
    assert config.quic_listen == "127.0.0.1:7700"
    assert config.tcp_listen == "127.0.0.1:7700"
    assert config.max_payload_bytes == 1024 * 1024
    assert config.allow_sealed_sender is False


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text('max_inbox_depth = 5\nmax_wait_ms = 1000\nlog_level = "warning"\n')
    config = load_config(
        config_file=file,
        environ={"QPC_SERVER_MAX_WAIT_MS": "2000", "QPC_SERVER_ALLOW_SEALED_SENDER": "yes"},
        overrides={"log_level": "debug", "data_dir": tmp_path},
    )
    assert config.max_inbox_depth == 5
    assert config.max_wait_ms == 2000
    assert config.allow_sealed_sender is True
    assert config.log_level == "debug"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"QPC_SERVER_MAX_WAIT_MS": "soon"}, "max_wait_ms: cannot use 'soon' as int"),
        ({"QPC_SERVER_ALLOW_SEALED_SENDER": "perhaps"}, "allow_sealed_sender"),
        ({"QPC_SERVER_MAX_PAYLOAD_BYTES": "0"}, "max_payload_bytes must be positive"),
        ({"QPC_SERVER_MAX_WAIT_MS": "90000"}, "quic_idle_timeout_s must be longer than max_wait_ms"),
        ({"QPC_SERVER_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_are_explained(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ, overrides={"data_dir": tmp_path})


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(config_file=tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=broken, environ={})
