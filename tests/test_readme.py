"""Every example in the README, as printed: each `tunelab` command line parses with the
flags it shows (and its --space, --set and numbers read as a user means them), each
study YAML loads as a study, each search block as a search, and the Python example
compiles. The README's first two commands run in CI itself."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tunelab.cli import build_parser, parse_command_line
from tunelab.core.config import parse_assignment
from tunelab.core.files import load_yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def command_lines() -> list[list[str]]:
    """The tunelab invocations in the README's shell blocks (after `&&` too), as argv."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value tunelab ...
                    words = words[1:]
                if "-m" in words and "tunelab" in words:  # torchrun ... -m tunelab ARGS
                    words = words[words.index("tunelab"):]
                if words and words[0] == "tunelab":
                    found.append(words[1:])
    return found


COMMANDS = command_lines()


def test_the_readme_has_its_examples():
    assert len(COMMANDS) >= 20
    assert {argv[0] for argv in COMMANDS} >= {"probe", "finetune", "zeroshot", "setfit", "run", "search", "report",
                                             "predict", "export", "info", "clip-finetune", "serve", "audit",
                                             "select"}


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_readme_command_parses_as_printed(argv):
    parser = build_parser()
    args = parse_command_line(argv, parser)  # an unknown flag or a bad choice exits here
    for assignment in getattr(args, "set", []) or []:
        key, value = parse_assignment(assignment)
        assert key and not (isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+e[-+]?\d+", value)), value
    if argv[0] == "search":
        from tunelab.study.search import parse_search, parse_space_flag

        space = dict(parse_space_flag(s) for s in args.space)
        parse_search({"space": space, "trials": args.trials, "metric": args.metric}, lambda key: True, "README")


def test_readme_yaml_blocks_load():
    from tunelab.study.search import parse_search
    from tunelab.study.spec import load_study

    yaml_blocks = blocks("yaml")
    assert yaml_blocks
    for text in yaml_blocks:
        values = load_yaml(text)
        if isinstance(values, dict) and "steps" in values:
            study = load_study(values)
            assert study.steps
        elif isinstance(values, list) and values and "search" in values[0]:
            step = values[0]
            parse_search(step["search"], lambda key: True, "README")
            assert load_study({"name": "x", "steps": values}).steps[0].search.trials == step["search"]["trials"]


def test_readme_python_example_compiles():
    for text in blocks("python"):
        compile(text, "README.md", "exec")


def test_numbers_are_read_as_a_user_writes_them():
    assert load_yaml("[1e-5, 1.0e-5, 2E+3, -1e-2, 1_000]") == [1e-5, 1e-5, 2000.0, -0.01, 1000]
    assert load_yaml("name: 1e5x") == {"name": "1e5x"}
    assert parse_assignment("train.lr=1e-5") == ("train.lr", 1e-5)
    from tunelab.study.search import parse_space_flag

    assert parse_space_flag("train.lr=loguniform:1e-5,1e-2") == ("train.lr", {"loguniform": [1e-5, 1e-2]})
