"""The ``edgefleet`` command: every subcommand explains itself, and the agent's import path stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgefleet.cli import build_parser


def _subcommand_paths() -> list[list[str]]:
    """Every command path in the parser, e.g. ['model', 'push']."""
    import argparse

    paths: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    paths.append([*prefix, name])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_the_main_commands_exist() -> None:
    paths = {" ".join(p) for p in _subcommand_paths()}
    for expected in [
        "convert",
        "keys generate",
        "model push",
        "model deploy",
        "fleet serve",
        "agent run",
        "agent check-config",
        "demo",
    ]:
        assert expected in paths


@pytest.mark.parametrize("path", _subcommand_paths(), ids=" ".join)
def test_every_command_has_help_that_explains_it(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"edgefleet {' '.join(path)}" in text
    assert len(text.split()) > 12, f"`edgefleet {' '.join(path)} --help` says too little:\n{text}"


def test_importing_the_agent_does_not_load_tensorflow_web_or_database_layers() -> None:
    code = (
        "import json, pkgutil, importlib, sys, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "import agent.cli, protocol\n"
        "heavy = ['tensorflow', 'keras', 'fastapi', 'starlette', 'uvicorn', 'sqlalchemy']\n"
        "print(json.dumps([h for h in heavy if h in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_user_error_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "agent",
            "check-config",
            "--config",
            "/nonexistent/agent.toml",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "/nonexistent/agent.toml" in result.stderr
    assert "Traceback" not in result.stderr
