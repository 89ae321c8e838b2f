"""Every `aivm` command is documented on ``docs/cli.md`` (a new command documents itself there)."""

from __future__ import annotations

from pathlib import Path

import click

from aivm_jax.cli._main import main

CLI_PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands(group: click.Group, prefix: str) -> list[str]:
    names = []
    for name, command in group.commands.items():
        full = f"{prefix} {name}"
        if isinstance(command, click.Group):
            names += _commands(command, full)
        else:
            names.append(full)
    return names


def test_every_command_is_on_the_cli_page():
    page = CLI_PAGE.read_text()
    missing = [name for name in _commands(main, "aivm") if f"`{name}" not in page]
    assert not missing, f"commands missing from docs/cli.md: {missing}"
