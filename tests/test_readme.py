"""The README's quickstart commands are exactly what CI runs."""
from __future__ import annotations

import re

from .conftest import REPO


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_has_two_commands_and_ci_runs_them():
    commands = quickstart_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"README command not in .ci/run: {command}"
    assert "clipscan scan samples/" in commands[0] and "torch" not in commands[0]
    assert "pytest" in commands[1]
