"""What a CLI process sets up before it imports anything heavy (issue 15: ``simsearch query`` start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartupSettings:
    """BLAS threads of the quick commands.

    numpy's OpenBLAS starts its thread pool when numpy is imported, and the threads spin a while waiting for work:
    about 0.13 s of CPU per process on 2 cores, taken from the model compile that runs beside the imports (a
    quarter of a fresh ``simsearch query``'s CPU time). The quick commands below do no BLAS work worth a thread
    (one query vector; FAISS searches one vector on one thread), so the CLI sets ``OPENBLAS_NUM_THREADS`` to
    :attr:`blas_threads` for them before numpy is imported, unless the environment already sets it. Their results
    are the same; ``index``, ``serve``, ``evaluate`` and the other commands keep every thread.
    """

    blas_threads: int = 1
    quick_commands: tuple[str, ...] = ("query", "recommend")


STARTUP = StartupSettings()
