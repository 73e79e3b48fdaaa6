"""Every `megatron-tulu` command resolves to megatron_tulu.commands.<name>:main, and every commands
module is reachable from the dispatcher (none forgotten)."""

from __future__ import annotations

import importlib
import pkgutil

import megatron_tulu.commands
from megatron_tulu.cli import COMMANDS, command_module, main


def test_every_command_has_a_main():
    for name in COMMANDS:
        assert callable(importlib.import_module(command_module(name)).main), name


def test_every_commands_module_is_a_command():
    modules = {
        m.name for m in pkgutil.iter_modules(megatron_tulu.commands.__path__) if not m.name.startswith("_")
    }
    assert modules == {name.replace("-", "_") for name in COMMANDS}


def test_unknown_command_is_one_error_line(capsys):
    assert main(["no-such-command"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'no-such-command'")
