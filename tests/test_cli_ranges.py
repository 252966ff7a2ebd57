"""Every numeric option's range shown in `--help` is the range enforced, in every command of
`pipeline`, `gan` and `analysis`.

The walk reads click's own command objects and parses command lines only: no stage runs, so it
takes a few seconds. A limit that only code deeper down enforces (dedup's --radius was refused
above 15 while `--help` said `x>=0`) belongs in the option's click type, where `--help` shows it;
the limits that stay in code are those of two options together (`gan interpolate`'s
(points - 1) x steps), tested with their commands.
"""

from __future__ import annotations

import functools
import math
import re

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.utils import check_random_state

from analysis.cli import main as analysis_cli
from core.cli import MAX_SEED
from gan.cli import main as gan_cli
from gan.config import MAX_IMAGES
from pipeline.cli import main as pipeline_cli
from pipeline.dedup import MAX_RADIUS

GROUPS = {"pipeline": pipeline_cli, "gan": gan_cli, "analysis": analysis_cli}
NUMBER_TYPES = (click.types.IntParamType, click.types.FloatParamType)
RANGE = re.compile(r"(?:(?P<low>-?[\d.e+-]+)(?P<low_op><=|<))?x"
                   r"(?:(?P<op>>=|>|<=|<)(?P<bound>-?[\d.e+-]+))?")


def leaf_commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def numeric_options():
    for prog, group in GROUPS.items():
        for path, command in leaf_commands(group):
            for option in command.params:
                if isinstance(option, click.Option) and isinstance(option.type, NUMBER_TYPES):
                    yield pytest.param(prog, path, option,
                                       id=f"{prog} {' '.join(path)} {option.opts[0]}")


NUMERIC = list(numeric_options())


def invoke(prog: str, *args: object) -> click.testing.Result:
    return CliRunner().invoke(GROUPS[prog], [str(a) for a in args])


@functools.cache
def help_words(prog: str, path: tuple[str, ...]) -> str:
    """A command's --help, whitespace normalized (wrapped lines joined)."""
    result = invoke(prog, *path, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def shown_range(prog: str, path: tuple[str, ...], option: click.Option) -> dict:
    """The range an option's --help entry shows: {"low", "low_open", "high", "high_open"}
    (None for an open end), parsed from the text as a user reads it."""
    command = GROUPS[prog]
    for name in path:
        command = command.commands[name]
    record = option.get_help_record(click.Context(command, info_name=path[-1]))
    words = " ".join(record[1].split())
    brackets = re.findall(r"\[([^\[\]]*)\]$", words)
    assert brackets, f"{option.opts[0]}: --help shows no range ({words!r})"
    assert f"[{brackets[0]}]" in help_words(prog, path)  # as --help prints it
    match = RANGE.fullmatch(brackets[0].split("; ")[-1])
    assert match, f"{option.opts[0]}: no range in {brackets[0]!r}"
    bounds = {"low": None, "low_open": False, "high": None, "high_open": False}
    if match["low"] is not None:
        bounds.update(low=float(match["low"]), low_open=match["low_op"] == "<")
    if match["op"] in (">=", ">"):
        bounds.update(low=float(match["bound"]), low_open=match["op"] == ">")
    elif match["op"] in ("<=", "<"):
        bounds.update(high=float(match["bound"]), high_open=match["op"] == "<")
    return bounds


def outside_and_edges(bounds: dict, is_int: bool) -> tuple[list, list]:
    """(values just outside the shown range, values at its closed ends)."""
    outside, edges = [], []
    for end, step, is_open in ((bounds["low"], -1, bounds["low_open"]),
                               (bounds["high"], 1, bounds["high_open"])):
        if end is None:
            continue
        if is_int:
            outside.append(int(end) if is_open else int(end) + step)
            edges.append(int(end) + (-step if is_open else 0))
        else:
            outside.append(end if is_open else math.nextafter(end, step * math.inf))
            if not is_open:
                edges.append(end)
    return outside, edges


@pytest.mark.parametrize(("prog", "path", "option"), NUMERIC)
def test_every_numeric_option_shows_its_range(prog, path, option):
    """A plain int or float takes any number, which something later refuses (in its own
    words, or with a traceback: `gan train --lr -1`, `--beta1 1.5`, a seed numpy refuses)."""
    assert isinstance(option.type, click.IntRange | click.FloatRange), (
        f"{prog} {' '.join(path)} {option.opts[0]}: a plain {option.type.name} shows no range")
    bounds = shown_range(prog, path, option)
    assert bounds["low"] is not None or bounds["high"] is not None


@pytest.mark.parametrize(("prog", "path", "option"), NUMERIC)
def test_the_command_line_refuses_just_outside_the_shown_range(prog, path, option):
    is_int = isinstance(option.type, click.types.IntParamType)
    outside, edges = outside_and_edges(shown_range(prog, path, option), is_int)
    extra = [] if is_int else ["nan", "inf", "-inf"]  # no shown range holds them
    name = option.opts[0]
    for value in [*outside, *extra]:
        result = invoke(prog, *path, name, value)
        assert result.exit_code == 2, (value, result.output)
        assert f"Invalid value for '{name}'" in result.output, (value, result.output)
    for value in edges:
        option.type.convert(str(value), option, None)  # the shown ends are taken


def test_limits_enforced_in_code_are_the_click_ranges():
    """The constants the code checks against are the ones the options show."""
    def option(prog: str, command: str, name: str) -> click.Option:
        return next(o for o in GROUPS[prog].commands[command].params if name in o.opts)

    radius = option("pipeline", "dedup", "--radius").type
    assert (radius.min, radius.max) == (0, MAX_RADIUS)
    n = option("gan", "sample", "--n").type
    assert (n.min, n.max) == (1, MAX_IMAGES)
    points, steps = option("gan", "interpolate", "--points"), option("gan", "interpolate",
                                                                     "--steps")
    assert (points.type.max - 1) * steps.type.min == MAX_IMAGES == steps.type.max


def test_every_seed_takes_what_numpy_torch_and_scikit_learn_take():
    seeds = [param.values[2] for param in NUMERIC if param.values[2].name == "seed"]
    assert len(seeds) == 12
    assert all((s.type.min, s.type.max) == (0, MAX_SEED) for s in seeds)
    np.random.default_rng(MAX_SEED)
    check_random_state(MAX_SEED)
    torch.Generator().manual_seed(MAX_SEED)
    with pytest.raises(ValueError):
        check_random_state(MAX_SEED + 1)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "x"])
def test_classify_c_is_auto_or_a_finite_number_above_zero_as_its_help_says(value):
    assert "a number > 0" in help_words("analysis", ("classify",))
    result = invoke("analysis", "classify", "--C", value)
    assert result.exit_code == 2
    assert "Invalid value for '--C'" in result.output and "finite number > 0" in result.output
