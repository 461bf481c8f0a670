"""What every command shares: the ``main`` group, the ``command`` decorator (``--json``, ``--quiet``, one-line
errors), and plain-text tables."""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

import click

from .._version import __version__
from ..config import STARTUP
from ..config.startup import THREAD_VARIABLES
from ..errors import SimsearchError

log = logging.getLogger("simsearch")


def setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if not quiet else "%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


@functools.cache
def skip_final_collection() -> None:
    """At interpreter exit, freeze the objects of the run instead of letting the interpreter's last collections
    walk them all (a third of a second under load, for the few MB they hold that the OS frees at once): files and
    indexes are closed by the commands themselves, never by garbage collection. Registered once per process."""
    atexit.register(gc.freeze)


def command(fn):
    """Common options (--json, --quiet) and error handling: user errors are one line on stderr, exit 1."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages.")
    @functools.wraps(fn)
    def wrapper(*args, as_json: bool, quiet: bool, **kwargs):
        setup_logging(quiet)
        skip_final_collection()
        try:
            result = fn(*args, quiet=quiet, **kwargs)
        except SimsearchError as e:
            raise click.ClickException(str(e)) from None
        except KeyError as e:
            raise click.ClickException(f"not found: {e.args[0]}") from None
        except sqlite3.Error as e:  # a damaged metadata file
            raise click.ClickException(
                f"cannot read the index metadata ({e}); check it with `simsearch verify`"
            ) from None
        except OSError as e:
            raise click.ClickException(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        data, text = result
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif text:  # file names that are not UTF-8 are printed as their original bytes
            click.echo(text.encode("utf-8", "surrogateescape"))

    return wrapper


def table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def hits_text(hits) -> str:
    """Results as a table: key and attribute columns appear when the items have them (catalogue indexes)."""
    if not hits:
        return "no results"
    with_key = any(h.key != h.path for h in hits)
    with_attrs = any(set(h.attributes) - {"label"} for h in hits)
    headers = ["rank", "score", "id", "label", "path"] + ["key"] * with_key + ["attributes"] * with_attrs
    rows = [
        [h.rank, f"{h.score:.4f}", h.id, h.label, h.path] + [h.key] * with_key + [_attrs(h.attributes)] * with_attrs
        for h in hits
    ]
    return table(rows, headers)


def _attrs(attributes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in attributes.items() if k != "label")


# command -> the module that defines it, imported only when that command runs (or for --help): `simsearch query`
# then loads the query code alone, not the build, server, fine-tuning or classification code
COMMANDS = {
    **dict.fromkeys(["classify", "audit"], "classifying"),
    "finetune": "finetune",
    **dict.fromkeys(["index", "info", "verify", "backbones", "rebuild"], "indexing"),
    **dict.fromkeys(["add", "update", "remove", "compact"], "live"),
    **dict.fromkeys(["query", "recommend"], "querying"),
    "evaluate": "evaluating",
    **dict.fromkeys(["duplicates", "export", "neighbors"], "scale"),
    "serve": "serving",
}


def limit_threads(command: str | None) -> None:
    """For a quick command (:data:`~simsearch.config.STARTUP`), numpy's BLAS and FAISS's OpenMP start one thread,
    unless the environment says otherwise (or numpy or FAISS is already loaded: then nothing changes)."""
    if command in STARTUP.quick_commands and "numpy" not in sys.modules and "faiss" not in sys.modules:
        for variable in THREAD_VARIABLES:
            os.environ.setdefault(variable, str(STARTUP.threads))


# command -> the module whose warm_up(args) it runs before its own module is imported (query: the model starts
# loading in a thread while the query code is imported); not once that module is imported (nothing left to hide)
WARM_UPS = {"query": "query_options"}


class LazyGroup(click.Group):
    """A group whose commands register themselves (``@main.command``) in the modules of :data:`COMMANDS`,
    imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"{__package__}.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        """Click's ``main``, after what the command line's command needs before anything imports numpy."""
        argv = list(sys.argv[1:] if args is None else args)
        limit_threads(next((a for a in argv if not a.startswith("-")), None))
        return super().main(args, *rest, **kwargs)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in WARM_UPS and args[0] not in self.commands and not ctx.resilient_parsing:
            importlib.import_module(f"{__package__}.{WARM_UPS[args[0]]}").warm_up(args[1:])
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="simsearch")
def main():
    """Visual similarity search: index image folders, find similar images."""
