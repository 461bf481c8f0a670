"""Command line: parses arguments, calls the library, prints. No logic of its own (layer: interfaces).

One module per group of commands, each registering on :data:`main` (see ``_common``); a command's module is
imported only when that command runs (``_common.COMMANDS``), so that start-up stays short.
"""

from ._common import main

__all__ = ["main"]
