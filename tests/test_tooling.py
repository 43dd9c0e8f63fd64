"""The tooling the demo, the benchmarks and every part's tests share: the bounded wait, the agent
TOML renderer and the process launcher, checked against the real agent config loader, the real
``edgefleet`` parser and a real child process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import load_config
from edgefleet.agent_toml import agent_settings, merged, render_agent_toml, write_agent_toml
from edgefleet.cli import build_parser
from edgefleet.stack import ManagedProcess, StackError, fleet_serve_args
from tests.support.toml import config_toml
from tests.support.wait import WaitTimeoutError, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", {"state": "idle"}])
    assert wait_until(lambda: next(answers), "an answer", 5, interval_s=0) == {"state": "idle"}


def test_wait_until_names_what_it_waited_for_and_the_last_value() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as error:
        wait_until(lambda: [], "the fleet API to answer", timeout_s=0.2, interval_s=0.05)
    elapsed = time.monotonic() - started
    assert "timed out after 0.2s waiting for the fleet API to answer (last value: [])" in str(error.value)
    assert 0.2 <= elapsed < 2


def test_wait_until_looks_once_even_with_no_time_left() -> None:
    calls: list[int] = []

    def look() -> int:
        calls.append(1)
        return len(calls)

    assert wait_until(look, "one look", timeout_s=0) == 1


def test_rendered_agent_toml_is_what_the_agent_loads(tmp_path: Path) -> None:
    # A quote and a backslash in a path: hand-written f-string TOML broke on these.
    state = tmp_path / 'state "a" \\ b'
    keys = tmp_path / "keys"
    settings = merged(
        agent_settings("dev-7", state, [keys], "http://fleet.test:8080", mqtt_port=1884, api_port=8500),
        {"update": {"probation_s": 3, "max_latency_factor": None}, "mqtt": {"keepalive_s": 9}},
    )
    config = load_config(write_agent_toml(tmp_path / "agent.toml", settings), environ={})
    assert config.device_id == "dev-7" and config.state_dir == state and config.trusted_keys == [keys]
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == ("127.0.0.1", 1884, 9)
    assert (config.api.port, config.fleet.url) == (8500, "http://fleet.test:8080")
    assert config.update.probation_s == 3
    assert "max_latency_factor" not in render_agent_toml(settings)  # None: the agent's default


def test_merged_replaces_values_and_merges_tables() -> None:
    base = {"device_id": "a", "mqtt": {"host": "h", "port": 1}}
    assert merged(base, {"mqtt": {"port": 2}}, {"device_id": "b"}) == {
        "device_id": "b",
        "mqtt": {"host": "h", "port": 2},
    }
    assert base == {"device_id": "a", "mqtt": {"host": "h", "port": 1}}  # not changed in place


def test_test_config_applies_its_defaults_then_the_caller_settings(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    later = {"update": {"probation_s": 7}}
    path.write_text(config_toml(tmp_path / "s", tmp_path / "k", "http://f", api_port=9, settings=later))
    config = load_config(path, environ={})
    assert (config.api.port, config.mqtt.port, config.fleet.poll_interval_s) == (9, 1, 300)
    assert (config.update.probation_s, config.update.retry_base_s) == (7, 0.05)


def test_the_fleet_serve_command_line_is_what_the_cli_accepts(tmp_path: Path) -> None:
    args = fleet_serve_args(
        db_url="sqlite:///f.db",
        port=8081,
        mqtt_host="broker.test",
        mqtt_port=1884,
        trusted_keys=tmp_path / "operator.pub",
        artifacts=tmp_path / "artifacts",
        client_id="fleet-1",
        extra=["--rollout-tick", "0.5"],
    )
    parsed = build_parser().parse_args(args)
    assert (parsed.db, parsed.listen, parsed.mqtt_host, parsed.mqtt_port) == (
        "sqlite:///f.db",
        "127.0.0.1:8081",
        "broker.test",
        1884,
    )
    assert parsed.trusted_keys == [tmp_path / "operator.pub"] and parsed.mqtt_client_id == "fleet-1"


def test_a_wait_on_a_process_ends_at_once_when_it_exits(tmp_path: Path) -> None:
    process = ManagedProcess("bad", ["no-such-command"], tmp_path / "bad.log")
    process.start()
    try:
        started = time.monotonic()
        with pytest.raises(StackError) as error:
            process.wait_until(lambda: False, "an answer that cannot come", timeout_s=60)
        assert time.monotonic() - started < 30
        assert "bad exited while waiting for an answer that cannot come" in str(error.value)
        assert "no-such-command" in str(error.value)  # the end of its log: argparse's complaint
    finally:
        process.stop()
