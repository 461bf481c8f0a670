"""Progress bars: one place that decides how they look and when they stay quiet."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, *, unit: str, enabled: bool, **options):
    """A tqdm bar on stderr, shown only when ``enabled`` and stderr is a terminal (logs and pipes stay clean)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        **options,
    )
