"""Command line: parse flags, build a typed config, call the library, print.

Each config flag names the dotted config key it sets; flags not given leave the
preset/YAML value (or the default) in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tunelab import __version__
from tunelab.cli.audit import add_audit_command
from tunelab.cli.commands import (
    add_export_command,
    add_info_command,
    add_predict_command,
    add_report_command,
    add_run_command,
    add_search_command,
    config_overrides,
    run_task_command,
)
from tunelab.cli.parsing import CommandParser, add_config_flags, parse_intermixed
from tunelab.cli.select import add_select_command
from tunelab.cli.serve import add_serve_command
from tunelab.core.errors import TunelabError
from tunelab.core.presets import list_presets
from tunelab.core.registry import all_tasks

logger = logging.getLogger("tunelab")


def parse_command_line(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``tunelab [-q] [--debug] COMMAND ...`` parsed (tunelab.cli.parsing.parse_intermixed)."""
    return parse_intermixed(argv, parser or build_parser())


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser: one per registered task (flags from its config's fields),
    then the commands that are not tasks (tunelab.cli.commands)."""
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="How far does a pretrained transformer get on your classification data?",
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)

    for task in all_tasks().values():
        sub = commands.add_parser(task.name, help=task.summary, description=task.description or task.summary,
                                  aliases=list(task.aliases))
        presets = list_presets(task.name)
        sub.add_argument("--config", metavar="FILE.yaml|PRESET",
                         help="a YAML config" + (f" or a shipped preset ({', '.join(presets)})" if presets else "")
                         + "; flags override it")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override any config key, e.g. --set train.logging_steps=5")
        sub.add_argument("--out", metavar="DIR", help=f"run directory (default runs/{task.name}-<timestamp>)")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace the run directory at --out (only one tunelab created), once the new run "
                              "completes")
        if task.resumable:
            sub.add_argument("--resume", action="store_true",
                             help="continue the run in --out from its last complete checkpoint")
        add_config_flags(sub, task)
        sub.set_defaults(handler=run_task_command, task_name=task.name)
    add_run_command(commands)
    add_search_command(commands)
    add_report_command(commands)
    add_info_command(commands)
    add_predict_command(commands)
    add_export_command(commands)
    add_serve_command(commands)
    add_audit_command(commands)
    add_select_command(commands)
    for sub in {id(p): p for p in commands.choices.values()}.values():  # also after the command (aliases: once)
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _setup_logging(quiet: bool, debug: bool = False) -> None:
    # tunelab's own messages at INFO; libraries that log through the root logger (ONNX
    # Runtime's quantiser, ...) only from WARNING, so the console says what tunelab decided.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("tunelab").setLevel(logging.WARNING if quiet else logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # Libraries' own warnings (scikit-learn's convergence notes, matplotlib's glyphs) go
    # through logging: shown with --debug, not as raw multi-line warnings on the console.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if debug else logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command_line(argv)
    debug = args.debug or os.environ.get("TUNELAB_DEBUG") == "1"
    _setup_logging(args.quiet, debug)
    try:
        return args.handler(args, argv)
    except TunelabError as exc:
        if debug:
            raise
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tunelab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"tunelab: unexpected error: {type(exc).__name__}: {first} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())




__all__ = ["build_parser", "config_overrides", "main", "parse_command_line"]
