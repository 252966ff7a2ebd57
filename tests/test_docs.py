"""Every command in README.md and docs/*.md runs as written.

The fenced command blocks (```bash, ```sh, ```shell, ```console and unlabelled ones) hold
commands a reader copies: each line that calls `pipeline`, `gan` or `analysis` (also as
`.venv/bin/gan`, after `VAR=value` or `torchrun ... $(which gan)`; a trailing backslash joins
lines) is checked against the real click command line: the subcommand exists, every option is an
option of it, every value converts (a choice is among the choices), required options and
arguments are there, and nothing is a placeholder. ```usage blocks hold synopses
(`[--size 64]`, `--format png|jpg`, `SRC...`): the same checks, placeholders and alternatives
allowed. Command spans in the prose (`pipeline shards --exclude`) must name real subcommands and
options. `make` lines must use real targets and variables, `python benchmarks/*.py` lines real
options, ```python blocks real imports, and links must resolve inside the repository.

The slow test runs the demo-data commands (what `make shards` runs and the README's tour) in a
scratch folder: a `data/demo` there is the demo corpus (the checkout's, or one `pipeline demo`
builds), and every other path the commands name is relative to that folder.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from tests.processes import run

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLIS = {"pipeline": "pipeline.cli", "gan": "gan.cli", "analysis": "analysis.cli"}
RUNNABLE = {"", "bash", "sh", "shell", "console"}  # commands, run as written
SYNOPSIS = {"usage"}  # synopses: [optional] parts, a|b alternatives, PLACEHOLDERS
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    start: int  # line number of the first line inside the fence
    lang: str
    lines: tuple[str, ...]


@dataclass
class Command:
    path: Path
    line: int
    text: str
    kind: str  # "run", "usage" or "inline"
    env: dict[str, str] = field(default_factory=dict)
    program: str = ""  # pipeline, gan, analysis, make, or a script path
    args: list[str] = field(default_factory=list)
    error: str = ""  # the line could not be split like a shell would

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def id(self) -> str:
        """A test id: where, and which command (`README.md:76 gan train`)."""
        return " ".join([self.where, Path(self.program).name, *self.args[:1]]).strip()

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def split_markdown(path: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a Markdown file, and its other lines (numbered from 1)."""
    blocks, prose = [], []
    fence, lang, start, body = "", "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if not fence and match:
            fence, lang, start, body = match.group(1), match.group(2).lower(), number + 1, []
        elif fence and set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence):
            blocks.append(Block(path, start, lang, tuple(body)))
            fence = ""
        elif fence:
            body.append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Lines as a shell (or a synopsis reader) sees them: continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(block.lines):
        number = block.start + offset
        if block.lang == "console" and pending is None:
            if not raw.startswith("$ "):
                continue  # output
            raw = raw[2:]
        if block.lang in SYNOPSIS:
            if raw[:1].isspace() and out:
                out[-1] = (out[-1][0], out[-1][1] + " " + raw.strip())
            elif raw.strip():
                out.append((number, raw.strip()))
            continue
        text = raw.rstrip()
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text.strip())
        else:
            pending = (number, text)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
        else:
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def words(text: str, kind: str) -> list[list[str]]:
    """The simple commands of a line, as words; `$(which gan)` stands for `gan`."""
    text = re.sub(r"\$\(\s*which\s+([\w./-]+)\s*\)", r"\1", text)
    tokens = shlex.split(text, comments=True)
    if kind == "usage":
        tokens = [t.lstrip("[").rstrip("]") for t in tokens]
        tokens = [t for t in tokens if t and t != "|"]
    commands, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def as_command(path: Path, line: int, text: str, kind: str, tokens: list[str]) -> Command | None:
    """A Command if `tokens` call one of the CLIs, make, or a repository Python script."""
    env, i = {}, 0
    while i < len(tokens) and ENV_ASSIGNMENT.match(tokens[i]):
        name, _, value = tokens[i].partition("=")
        env[name] = value
        i += 1
    if i < len(tokens) and tokens[i] == "torchrun":  # torchrun [its options] gan train ...
        later = [j for j in range(i + 1, len(tokens)) if cli_name(tokens[j])]
        if not later:
            return None
        i = later[0]
    if i >= len(tokens):
        return None
    first = tokens[i]
    if cli_name(first):
        return Command(path, line, text, kind, env, cli_name(first), tokens[i + 1:])
    if first == "make" and kind != "inline":
        return Command(path, line, text, kind, env, "make", tokens[i + 1:])
    if (Path(first).name.startswith("python") and len(tokens) > i + 1
            and tokens[i + 1].endswith(".py") and (ROOT / tokens[i + 1]).is_file()):
        return Command(path, line, text, kind, env, tokens[i + 1], tokens[i + 2:])
    return None


def cli_name(word: str) -> str:
    """`gan` for `gan`, `.venv/bin/gan` or `/somewhere/bin/gan`; '' for anything else."""
    name = word.rsplit("/", 1)[-1]
    if name in CLIS and (word == name or word.endswith("bin/" + name)):
        return name
    return ""


def doc_commands(path: Path) -> list[Command]:
    blocks, prose = split_markdown(path)
    found: list[Command] = []
    for block in blocks:
        if block.lang in RUNNABLE or block.lang in SYNOPSIS:
            kind = "usage" if block.lang in SYNOPSIS else "run"
            for line, text in logical_lines(block):
                try:
                    commands = words(text, kind)
                except ValueError as err:
                    found.append(Command(path, line, text, kind, error=str(err)))
                    continue
                for tokens in commands:
                    if kind == "usage" and not cli_name(tokens[0]):
                        continue
                    command = as_command(path, line, text, kind, tokens)
                    if command is not None:
                        found.append(command)
    # command spans in the prose (a span may wrap onto the next line)
    text = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        try:
            tokens = shlex.split(span)
        except ValueError:
            continue
        if len(tokens) >= 2 and cli_name(tokens[0]) and re.fullmatch(r"[a-z][a-z-]*",
                                                                     tokens[1]):
            line = numbers[text.count("\n", 0, match.start())]
            found.append(Command(path, line, span, "inline", {}, cli_name(tokens[0]),
                                 tokens[1:]))
    return found


ALL_COMMANDS = [c for path in DOCS for c in doc_commands(path)]
CLI_COMMANDS = [c for c in ALL_COMMANDS if c.program in CLIS or c.error]
MAKE_COMMANDS = [c for c in ALL_COMMANDS if c.program == "make"]
SCRIPT_COMMANDS = [c for c in ALL_COMMANDS if c.program.endswith(".py")]


def load_group(name: str) -> click.Group:
    return importlib.import_module(CLIS[name]).main


def check_options(command: Command, cli: click.Command, args: list[str], label: str,
                  help_names: set[str]) -> list[str]:
    """What is wrong with `args` (what `command` passes) as arguments of the click command
    `cli`."""
    problems: list[str] = []
    options = {opt: param for param in cli.params if isinstance(param, click.Option)
               for opt in (*param.opts, *param.secondary_opts)}
    ctx = click.Context(cli, info_name=label.split()[-1])
    positionals: list[str] = []
    given: set[str] = set()
    wants_help = False
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token == "-" or re.match(r"^-\d", token):
            positionals.append(token)
            continue
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        if name in help_names:
            wants_help = True
            continue
        param = options.get(name)
        if param is None:
            near = difflib.get_close_matches(name, [*options, *help_names], n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            problems.append(f"{name} is not an option of `{label}`{hint}")
            continue
        given.add(param.name)
        if param.is_flag or param.count:
            if eq:
                problems.append(f"{name} is a flag of `{label}` and takes no value")
            continue
        if not eq:
            if i + param.nargs > len(args):
                if command.kind != "inline":
                    problems.append(f"{name} of `{label}` needs a value")
                continue
            value = " ".join(args[i:i + param.nargs])
            i += param.nargs
        problems += check_value(command, param, name, value, label, ctx)
    if command.kind == "inline" or wants_help:
        return problems
    for param in cli.params:
        if isinstance(param, click.Option) and param.required and param.name not in given:
            problems.append(f"`{label}` needs {param.opts[-1]}")
    arguments = [p for p in cli.params if isinstance(p, click.Argument)]
    variadic = any(a.nargs == -1 for a in arguments)
    room = sum(a.nargs for a in arguments if a.nargs > 0)
    needed = sum(max(a.nargs, 1) for a in arguments if a.required)
    if not variadic and len(positionals) > room:
        problems.append(f"`{label}` takes {room} argument(s), the docs give "
                        f"{len(positionals)}: {positionals}")
    elif len(positionals) < needed:
        missing = [a.human_readable_name for a in arguments if a.required]
        problems.append(f"`{label}` needs its argument(s) {missing}")
    if command.kind == "run":
        problems += [f"`{p}` is a placeholder: not runnable as written" for p in positionals
                     if PLACEHOLDER.match(p) or p.startswith(("RUN/", "OUT/", "SRC/"))]
        bracketed = [p for p in positionals if p.startswith("[") or p.endswith("]")]
        if bracketed:
            problems.append(f"[optional] parts are not runnable as written (a ```usage block "
                            f"takes them): {' '.join(bracketed)}")
    return problems


def check_value(command: Command, param: click.Option, name: str, value: str, label: str,
                ctx: click.Context) -> list[str]:
    """A documented value: among the choices, convertible, accepted by the option's callback."""
    problems = []
    alternatives = value.split("|") if command.kind == "usage" else [value]
    for v in alternatives:
        if command.kind == "usage" and PLACEHOLDER.match(v):
            continue
        if command.kind == "run" and (PLACEHOLDER.match(v) or v.startswith(("RUN/", "OUT/"))):
            problems.append(f"{name} {v}: a placeholder, not runnable as written")
            continue
        if isinstance(param.type, click.Choice):
            if v not in param.type.choices:
                problems.append(f"{name} {v}: not a choice of `{label}` "
                                f"(choose from {', '.join(map(str, param.type.choices))})")
            continue
        if isinstance(param.type, click.Path):
            continue  # the docs' files need not exist here
        try:
            converted = param.type.convert(v, param, ctx)
            if param.callback is not None and not param.is_eager:
                param.callback(ctx, param, converted)
        except click.BadParameter as err:
            problems.append(f"{name} {v}: refused by `{label}`: {err.format_message()}")
    return problems


def check_cli_command(command: Command) -> list[str]:
    if command.error:
        return [f"cannot be read as a shell line: {command.error}"]
    group = load_group(command.program)
    help_names = set(group.context_settings.get("help_option_names", ["--help"]))
    if not command.args:
        return [] if command.kind == "inline" else [f"`{command.program}` without a subcommand"]
    sub = command.args[0]
    if sub.startswith("-"):
        unknown = [a for a in command.args if a.startswith("-") and a not in help_names]
        return [f"{a} is not an option of `{command.program}`" for a in unknown]
    cli = group.commands.get(sub)
    if cli is None:
        near = difflib.get_close_matches(sub, list(group.commands), n=1)
        hint = f"; did you mean `{command.program} {near[0]}`?" if near else ""
        return [f"`{command.program} {sub}` is not a command (there are "
                f"{', '.join(sorted(group.commands))}){hint}"]
    return check_options(command, cli, command.args[1:], f"{command.program} {sub}",
                         help_names)


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=[c.id for c in CLI_COMMANDS])
def test_command_matches_the_cli(command: Command):
    problems = check_cli_command(command)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


def test_the_docs_show_commands_of_every_cli():
    shown = {c.program for c in CLI_COMMANDS if c.kind == "run"}
    assert shown == set(CLIS), f"no runnable example of {set(CLIS) - shown}"
    for name in CLIS:
        group = load_group(name)
        documented = {c.args[0] for c in CLI_COMMANDS if c.program == name and c.args}
        undocumented = set(group.commands) - documented
        assert not undocumented, f"`{name}` commands the docs never show: {undocumented}"


# ---- make, scripts, Python, links ---------------------------------------------------------------

def makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and variables."""
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:+]?=", text, re.M))
    return targets, variables


@pytest.mark.parametrize("command", MAKE_COMMANDS, ids=[c.id for c in MAKE_COMMANDS])
def test_make_line_uses_real_targets_and_variables(command: Command):
    targets, variables = makefile()
    problems = []
    args = iter(command.args)
    for arg in args:
        if arg in ("-C", "-f", "-j"):
            next(args, None)
        elif "=" in arg:
            if arg.split("=", 1)[0] not in variables:
                problems.append(f"{arg.split('=', 1)[0]} is not a Makefile variable")
        elif not arg.startswith("-") and arg not in targets:
            problems.append(f"`make {arg}`: no such target (there are {sorted(targets)})")
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("command", SCRIPT_COMMANDS, ids=[c.id for c in SCRIPT_COMMANDS])
def test_script_line_uses_real_options(command: Command):
    path = ROOT / command.program
    spec = importlib.util.spec_from_file_location(f"_doc_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    clis = [v for v in vars(module).values() if isinstance(v, click.Command)
            and getattr(v.callback, "__module__", "") == module.__name__]
    assert clis, f"{command}: {command.program} has no click command to check against"
    help_names = {"--help"}
    problems = check_options(command, clis[0], command.args, command.program, help_names)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


PYTHON_BLOCKS = [(b.path, b.start, "\n".join(b.lines)) for path in DOCS
                 for b in split_markdown(path)[0] if b.lang in ("python", "py")]


@pytest.mark.parametrize("path, line, code", PYTHON_BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in PYTHON_BLOCKS])
def test_python_block_imports_exist(path: Path, line: int, code: str):
    tree = ast.parse(code, filename=f"{path.name}:{line}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{path.relative_to(ROOT)}:{line}: `from {node.module} import "
                    f"{alias.name}`: no such name")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_markdown(path)
    return {slug(line.lstrip("#")) for _, line in prose if re.match(r"^#{1,6} ", line)}


def links(path: Path) -> list[tuple[int, str]]:
    _, prose = split_markdown(path)
    found = []
    for number, line in prose:
        line = re.sub(r"`[^`]*`", "", line)
        found += [(number, m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)\)", line)]
    return found


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_links_resolve_inside_the_repository(path: Path):
    problems = []
    text = path.read_text(encoding="utf-8")
    if "../shared" in text:
        problems.append("cites ../shared, outside the repository")
    for number, target in links(path):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in (linked, *linked.parents):
            problems.append(f"line {number}: {target} is outside the repository")
        elif not linked.exists():
            problems.append(f"line {number}: {target} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"line {number}: no heading #{anchor} in {linked.name}")
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_the_readme_leads_to_every_docs_page():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert not pages - linked, f"docs pages the README does not link: {pages - linked}"
    others = [p for p in (ROOT / "docs").iterdir() if p.suffix != ".md" and p.is_file()]
    shown = {(d.parent / t.partition("#")[0]).resolve() for d in DOCS for _, t in links(d)}
    assert not set(others) - shown, f"files in docs/ no page shows: {set(others) - shown}"


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make test TORCH_SPEC='torch==2.13.0'" in "\n".join(lines)  # what .ci/run runs


# ---- the demo-data commands, run -----------------------------------------------------------------

# (page, the command's first words): in this order, each as written, in a scratch folder.
DEMO_RUNS = [
    ("docs/pipeline.md", "pipeline faces data/demo/scraped --out data/shards/faces"),
    ("docs/pipeline.md", "pipeline shards data/demo/lsun --out data/shards/lsun"),
    ("README.md", "pipeline shards data/demo/scraped --out data/shards/scraped"),
    ("README.md", "gan train --data data/shards/lsun --out runs/demo"),
    ("README.md", "gan sample --ckpt runs/demo/checkpoints/last.pt"),
    ("README.md", "gan interpolate --ckpt runs/demo/checkpoints/last.pt"),
    ("README.md", "gan arithmetic --ckpt runs/demo/checkpoints/last.pt"),
    ("README.md", "analysis guided-backprop --ckpt runs/demo/checkpoints/last.pt"),
]
# Two changes keep the run short: `gan train` takes 2 steps, and the LSUN shards skip
# `--exclude data/dedup/lsun/duplicates.txt` (the demo dedup that writes it takes ~30 s;
# tests/test_make.py runs the whole of `make shards`).
RUNNER = ("import sys; import core.launch as launch; name = sys.argv.pop(1); "
          "sys.argv[0] = name; getattr(launch, name)()")


def demo_command(page: str, prefix: str) -> Command:
    for command in doc_commands(ROOT / page):
        if command.kind == "run" and " ".join([command.program, *command.args]).startswith(
                prefix):
            return command
    raise AssertionError(f"{page} no longer shows `{prefix} ...`: update DEMO_RUNS")


def shortened(command: Command) -> list[str]:
    args, out, i = [], list(command.args), 0
    while i < len(out):
        if command.program == "gan" and out[0] == "train" and out[i] == "--steps":
            args += ["--steps", "2"]
            i += 2
        elif out[i] == "--exclude":
            i += 2
        else:
            args.append(out[i])
            i += 1
    return args


def run_cli(program: str, args: list[str], cwd: Path, env: dict[str, str] | None = None):
    environment = {**os.environ, **(env or {}),
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return run([sys.executable, "-c", RUNNER, program, *args], cwd=cwd, env=environment,
               timeout=300)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The checkout's demo corpus (from `make shards`), or one built by `pipeline demo`."""
    existing = ROOT / "data" / "demo"
    if (existing / "scraped").is_dir() and any((existing / "lsun").glob("*/data.mdb")):
        return existing
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli("pipeline", ["demo", str(out)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_demo_commands_run_as_written(demo_corpus: Path, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(demo_corpus, target_is_directory=True)
    for page, prefix in DEMO_RUNS:
        command = demo_command(page, prefix)
        args = shortened(command)
        result = run_cli(command.program, args, cwd=tmp_path, env=command.env)
        assert result.returncode == 0, (
            f"{command}\n  ran as: {command.program} {shlex.join(args)}\n"
            f"{result.stdout[-2000:]}{result.stderr[-3000:]}")
        if "--out" in args:
            written = tmp_path / args[args.index("--out") + 1]
            assert written.exists(), f"{command}: nothing at --out {written}"
