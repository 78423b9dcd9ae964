"""Help and hints keep every character: no markup eaten, nothing truncated, commands never wrapped."""

from __future__ import annotations

import pytest

from dec_cli.cli.render import console_for

COMMANDS = ("digits", "evaluate", "finetune", "retrofit", "info", "models", "warp", "unwarp")


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def test_brackets_in_help_are_shown(run_dec):
    result = run_dec("warp", "--help")
    assert result.code == 0
    assert "[x0,y0,x1,y1]" in result.out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns_without_truncation(run_dec, command):
    result = run_dec(command, "--help")
    assert result.code == 0, result.err
    assert "\u2026" not in result.out and "<bool>" not in result.out
    assert "last/best.safetensors" in run_dec("finetune", "--help").out


def test_example_command_lines_are_not_rewrapped(run_dec):
    out = run_dec("warp", "--help").out
    assert "  On each object: dec warp photos/ zoomed/ --zoom 0.8,1,1.25 --center object --boxes boxes.json\n" in out


def test_shell_completion_is_available(run_dec):
    assert "--install-completion" in run_dec("--help").out
    result = run_dec("--show-completion", "bash")
    assert result.code == 0 and "_dec_completion" in result.out


def test_long_hint_is_one_line_when_stdout_is_not_a_terminal(capsys):
    hint = ("  dec evaluate MODEL.safetensors resnet50 --weights r50.pth --data VAL_ZOOM --warps 4 " * 2).rstrip()
    console_for(None).print(hint, markup=False)
    assert capsys.readouterr().out == hint + "\n"
