"""What a CLI process sets up before it imports anything heavy (issue 15: ``simsearch query`` start-up)."""

from __future__ import annotations

from dataclasses import dataclass

# the environment variables that set those thread pools (read once, when the libraries load)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class StartupSettings:
    """Threads of numpy's BLAS and of FAISS's OpenMP for the quick commands.

    numpy's OpenBLAS starts its thread pool when numpy is imported, and the threads spin a while waiting for work
    (about 0.13 s of CPU per process on 2 cores); FAISS's OpenMP threads, started by the first search, took 4-8 ms
    for a one-vector search that one thread does in 0.6 ms, and then spin too (about 0.1 s of CPU). That CPU is
    taken from the model compile and the imports running beside them. The quick commands below do no work worth
    a second thread (one query vector, searched once), so the CLI sets ``OPENBLAS_NUM_THREADS`` and
    ``OMP_NUM_THREADS`` to :attr:`threads` for them before numpy or FAISS is loaded, each unless the environment
    already sets it. Their results are the same, bit for bit; ``index``, ``serve``, ``evaluate`` and the other
    commands keep every thread.
    """

    threads: int = 1
    quick_commands: tuple[str, ...] = ("query", "recommend")


STARTUP = StartupSettings()
