"""Options anywhere on the command line: every command (built from the task registry, so
a new task gets the same check) parses its options the same before, between and after
its positional arguments."""

import argparse

import pytest

from tunelab.cli import build_parser, main, parse_command_line

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


def sample_arguments(sub: argparse.ArgumentParser) -> tuple[list[list[str]], list[list[str]]]:
    """(positional values, option groups) that exercise every option of a command."""
    positionals, options = [], []
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            count = 2 if action.nargs in ("+", "*") else 1
            positionals += [[f"{action.dest}-{i}"] for i in range(count)]
        elif action.nargs == 0:
            options.append([action.option_strings[-1]])
        else:
            count = action.nargs if isinstance(action.nargs, int) else 1
            value = str(action.choices[-1]) if action.choices else "3" if action.type in (int, float) else "x"
            options.append([action.option_strings[-1], *[value] * count])
    return positionals, options


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_options_parse_the_same_before_between_and_after_positionals(command):
    positionals, options = sample_arguments(COMMANDS[command])
    flat = [x for group in options for x in group]
    values = [x for group in positionals for x in group]
    layouts = [flat + values, values + flat, values[:1] + flat + values[1:]]
    if len(options) > 1 and values:  # options split around the positionals too
        half = len(options) // 2
        first = [x for group in options[:half] for x in group]
        layouts.append(first + values[:1] + [x for group in options[half:] for x in group] + values[1:])
    parsed = [vars(parse_command_line([command, *layout], PARSER)) for layout in layouts]
    for other in parsed[1:]:
        assert other == parsed[0]


def test_the_commands_users_type():
    args = parse_command_line(["predict", "runs/ft", "--backend", "onnx", "a gorgeous, moving and funny film"])
    assert (args.run_dir, args.inputs, args.backend) == ("runs/ft", ["a gorgeous, moving and funny film"], "onnx")
    args = parse_command_line(["predict", "runs/ft", "--backend", "onnx-int8", "a", "--pair", "A", "B", "b"])
    assert args.inputs == ["a", "b"] and args.pair == [["A", "B"]] and args.backend == "onnx-int8"
    args = parse_command_line(["report", "DIR", "--out", "FILE", "DIR2"])
    assert args.dirs == ["DIR", "DIR2"] and args.out == "FILE"
    args = parse_command_line(["-q", "predict", "runs/ft", "--", "-1 star: awful", "--not-a-flag"])
    assert args.quiet and args.inputs == ["-1 star: awful", "--not-a-flag"]


def test_an_unknown_flag_is_one_line_that_points_at_help(capsys):
    with pytest.raises(SystemExit):
        main(["report", "DIR", "--no-such-flag"])
    err = capsys.readouterr().err
    assert err.startswith("tunelab report: error: unrecognized arguments: --no-such-flag")
    assert "(see tunelab report --help)" in err and len(err.strip().splitlines()) == 1
