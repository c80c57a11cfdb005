"""Parsing the command line: one flag per config field (its help, choices and default
from the field), options anywhere among positional arguments, Hugging Face spellings
mapped to tunelab's flags, and "did you mean" for an unknown one."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

CONFIG_PREFIX = "cfg:"


def _metavar(field, hint) -> str:
    meta = field.metadata
    if meta.get("metavar"):
        return meta["metavar"]
    if meta.get("choices"):
        return "|".join(meta["choices"])
    return field.name.upper()


def _default_text(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(parser: argparse.ArgumentParser, task) -> None:
    """One flag per config field that declares one (``tunelab.core.config.setting``): its name,
    help, choices and metavar from the field's metadata, its default from the task's own
    default config, so that the help can never disagree with the code."""
    import typing

    defaults = task.config_class()
    seen: dict[str, str] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}

    def walk(cls, instance, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            value = getattr(instance, field.name)
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], value, f"{prefix}{field.name}.")
                continue
            meta = field.metadata
            flag = meta.get("flag")
            key = prefix + field.name
            if not flag or key in task.unused_settings:
                continue
            if flag in seen:
                raise RuntimeError(f"{task.name}: {flag} would set both {seen[flag]} and {key}")
            seen[flag] = key
            title = prefix.rstrip(".") or "general"
            group = groups.setdefault(title, parser.add_argument_group(title))
            help_text = meta.get("help", "") + f" [{key}]"
            if meta.get("hidden"):
                help_text = argparse.SUPPRESS
            if meta.get("const") is not None:
                group.add_argument(flag, dest=CONFIG_PREFIX + key, action="store_const", const=meta["const"],
                                   default=None, help=help_text)
                continue
            shown = _default_text(value)
            if shown and "default" not in help_text:
                help_text = f"{help_text[:-len(key) - 3]} (default {shown}) [{key}]"
            group.add_argument(flag, dest=CONFIG_PREFIX + key, default=None, metavar=_metavar(field, hints),
                               help=help_text)

    walk(task.config_class, defaults, "")


# Hugging Face Trainer spellings that users type from habit -> tunelab's flags.
HF_SPELLINGS = {
    "--learning_rate": ["--lr"], "--learning-rate": ["--lr"], "--num_train_epochs": ["--epochs"],
    "--num-train-epochs": ["--epochs"], "--output_dir": ["--out"], "--output-dir": ["--out"],
    "--bf16": ["--precision", "bf16"], "--fp16": ["--precision", "fp16"], "--eval_steps": ["--eval-every"],
    "--eval-steps": ["--eval-every"], "--per_device_train_batch_size": ["--batch-size"],
    "--per_device_eval_batch_size": ["--eval-batch-size"], "--gradient_accumulation_steps": ["--grad-accum"],
    "--warmup_ratio": ["--warmup"], "--warmup_steps": ["--warmup"], "--model_name_or_path": ["--model"],
    "--dataset_name": ["--dataset"], "--max_seq_length": ["--max-length"], "--overwrite_output_dir": ["--overwrite"],
    "--resume_from_checkpoint": ["--resume"],
}


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an unknown option gets "did you mean" with the closest ones."""

    def error(self, message: str):
        import difflib
        import re

        unknown = re.findall(r"(--?[\w-]+)", message.split("unrecognized arguments:", 1)[1]) \
            if "unrecognized arguments:" in message else []
        options = {o: o for a in self._actions for o in a.option_strings if o.startswith("--")}
        options.update({k: " ".join(v) for k, v in HF_SPELLINGS.items() if v[0] in options})
        hints = []
        for flag in unknown:
            close = difflib.get_close_matches(flag, list(options), n=3, cutoff=0.6)
            close = list(dict.fromkeys(options[c] for c in close))[:2]
            if close:
                hints.append(f"{flag}: did you mean {' or '.join(close)}?")
        # One line, not the usage block: the hint is what the user needs; --help has the rest.
        self.exit(2, f"{self.prog}: error: {message}" + ("; " + "; ".join(hints) if hints else "")
                  + f" (see {self.prog} --help)\n")


def translate_spellings(arguments: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Hugging Face spellings (``--learning_rate 1e-4``, ``--bf16``) and snake_case forms
    of tunelab's own flags become the flags this command has; nothing after ``--``."""
    known = {o for a in parser._actions for o in a.option_strings}
    out: list[str] = []
    for index, argument in enumerate(arguments):
        if argument == "--":
            return out + list(arguments[index:])
        flag, equals, value = argument.partition("=")
        if flag.startswith("--") and flag not in known:
            replacement = HF_SPELLINGS.get(flag)
            if replacement is None and flag.replace("_", "-") in known:
                replacement = [flag.replace("_", "-")]
            if replacement is not None and replacement[0] in known:
                out += replacement + ([value] if equals else [])
                continue
        out.append(argument)
    return out


def parse_intermixed(argv: Sequence[str], parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse ``tunelab [-q] [--debug] COMMAND ...`` with the command's options allowed
    anywhere among its positional arguments (``predict RUN --backend onnx TEXT``), as
    git, pip and pytest allow; ``--`` ends the options, for a text that starts with
    ``-``. argparse's intermixed parsing does not support subparsers, so the command's
    own parser parses everything after the command's name."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    index = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if index is None or argv[index] not in commands.choices or "--" in argv[:index]:
        return parser.parse_args(argv)  # help, version, a missing or unknown command: argparse's own message
    options = argparse.Namespace(quiet=False, debug=False)
    leading = argparse.ArgumentParser(prog="tunelab", add_help=False)
    leading.add_argument("-q", "--quiet", action="store_true")
    leading.add_argument("--debug", action="store_true")
    known, unknown = leading.parse_known_args(argv[:index], options)
    if unknown:
        return parser.parse_args(argv)
    command = commands.choices[argv[index]]
    args = command.parse_intermixed_args(translate_spellings(argv[index + 1:], command), known)
    args.command = argv[index]
    return args
