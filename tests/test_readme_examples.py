"""The README's replay example prints what the README says it prints: its numbers cannot drift."""
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from moesim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def console_blocks(text: str):
    """(command, printed lines) of each ```console block whose command is `moesim replay`."""
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.rstrip("\n").split("\n")
        if lines and lines[0].startswith("$ moesim replay") and not lines[0].endswith("\\"):
            yield lines[0][2:], lines[1:]


EXAMPLES = list(console_blocks((ROOT / "README.md").read_text(encoding="utf-8")))


def test_the_readme_has_a_replay_example():
    assert EXAMPLES


@pytest.mark.parametrize("command,printed", EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_a_readme_replay_example_prints_what_the_readme_shows(command, printed, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [line.rstrip() for line in result.output.rstrip("\n").split("\n")] == [line.rstrip() for line in printed]
