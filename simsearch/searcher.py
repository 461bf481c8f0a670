"""Request batching that any backend can use: concurrent single searches coalesced into batched index searches.

    searcher = Searcher()
    hits = searcher.search(index, vector, k=10, filter={"label": "cat"}, exclude=[3])   # from any thread
    hits = await searcher.asearch(index, vector, k=10)                                  # from an event loop
    rows = searcher.search_many(index, vectors, k=10)                                   # already a batch
    searcher.close()

An exact (Flat) search of one query reads every stored vector: it is bound by memory bandwidth. A batch of queries
reads them once (a matrix product), so eight queries cost about twice one. The searcher's worker thread takes the
searches that are waiting, groups those that can share one index search (same index, same filter), runs each
group through :func:`simsearch.search.search_vectors` and hands every caller its own :class:`~simsearch.search.Hit`
list: no added latency when idle (a batch of one), several times the throughput under load. Once batches of several
queries show that requests arrive together, the worker waits up to ``linger_s`` for a batch to fill.

Each query's excluded ids go with it into the batch (``exclude_per_row``: the index search fetches enough for the
row that excludes most), or, when there are many, it is searched alone with a FAISS selector. The results are
exactly those of ``search_vectors(index, vector[None], k, exclude=..., filter=...)``.

How much a batch saves depends on :func:`~simsearch.search.search_vectors`: one index search for all its rows
costs about what one row costs on an exact index; a search per row saves nothing but the hand-over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .config.limits import LIMITS
from .config.serve import BatchSpec
from .errors import SimsearchError
from .search import Hit, Searchable, check_vector, search_vectors

UNIT_TOLERANCE = 1e-4  # |v.v - 1| below which a submitted vector counts as unit (float32 rounding is ~1e-6)

log = logging.getLogger("simsearch.searcher")


def _filter_key(filter: dict | str | None) -> str | None:
    """A key under which searches with equal filters share a batch (None: cannot be shared)."""
    if not filter:
        return ""
    if isinstance(filter, str):
        return "where:" + filter
    try:
        return "dict:" + json.dumps(filter, sort_keys=True)
    except (TypeError, ValueError):
        return None


@dataclass
class _Job:
    index: Searchable
    vector: np.ndarray
    k: int
    exclude: frozenset[int]
    filter: dict | str | None
    future: Future
    alone: bool  # searched on its own (many exclusions, or a filter that cannot be compared)
    group: tuple = ()
    augment: str = "auto"  # see simsearch.search_augment.search_spec


class Searcher:
    """Coalesces concurrent searches of unit vectors into batched :func:`search_vectors` calls (thread-safe).

    ``spec.workers`` threads take batches from one queue: while one searches (FAISS releases the GIL), another
    turns its results into hits. ``on_start`` runs first in each worker thread (per-thread settings such as
    FAISS's OpenMP thread count).
    Jobs of different indexes (e.g. before and after a reload) are never mixed.
    """

    def __init__(self, spec: BatchSpec = BatchSpec(), *, on_start: Callable[[], None] | None = None):
        self.spec = spec
        self._on_start = on_start
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.batches = 0  # index searches run by the workers
        self.queries = 0  # searches answered by the workers

    # -- submitting
    def submit(
        self,
        index: Searchable,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Iterable[int] = (),
        filter: dict | str | None = None,
        augment: str = "auto",
    ) -> Future:
        """Queue a search of one unit ``vector`` (the index's dim); the future gives its ``list[Hit]``."""
        k = int(k)
        if not 1 <= k <= LIMITS.max_k:
            raise SimsearchError(f"k must be between 1 and {LIMITS.max_k}, not {k}")
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not abs(float(np.dot(vector, vector)) - 1.0) < UNIT_TOLERANCE:  # nan and inf fail too
            vector = check_vector(vector, index.snapshot.manifest.dim)  # this request's error, not its batch's
        skip = frozenset(int(i) for i in exclude)
        fkey = _filter_key(filter)
        alone = fkey is None or len(skip) > self.spec.max_batched_exclude or k + len(skip) > LIMITS.max_k
        # augmented results are a merge of two rankings: exclusions must apply before it, not after
        alone = alone or (bool(skip) and augment != "none" and index.snapshot.augmented is not None)
        job = _Job(index, vector, k, skip, filter, Future(), alone, augment=augment)
        job.group = (id(index), fkey, augment, id(job) if alone else None)
        self._ensure_worker()
        self._queue.put(job)
        return job.future

    def search(
        self,
        index: Searchable,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Iterable[int] = (),
        filter: dict | str | None = None,
        augment: str = "auto",
    ) -> list[Hit]:
        """Blocks until the worker has searched ``vector``."""
        return self.submit(index, vector, k, exclude=exclude, filter=filter, augment=augment).result()

    async def asearch(
        self,
        index: Searchable,
        vector: np.ndarray,
        k: int,
        *,
        exclude: Iterable[int] = (),
        filter: dict | str | None = None,
        augment: str = "auto",
    ) -> list[Hit]:
        """:meth:`search` for an event loop: waits without holding a thread."""
        future = self.submit(index, vector, k, exclude=exclude, filter=filter, augment=augment)
        return await asyncio.wrap_future(future)

    def search_many(
        self,
        index: Searchable,
        vectors: np.ndarray,
        k: int,
        *,
        exclude: Iterable[int] = (),
        filter: dict | str | None = None,
        augment: str = "auto",
    ) -> list[list[Hit]]:
        """A batch the caller already has: searched at once in the calling thread (no queueing)."""
        return search_vectors(index, vectors, k=k, exclude=exclude, filter=filter, augment=augment)

    # -- the worker
    def _ensure_worker(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._closed:
                raise SimsearchError("the searcher is closed")
            if not self._threads:
                for n in range(self.spec.workers):
                    t = threading.Thread(target=self._run, name=f"simsearch-searcher-{n}", daemon=True)
                    t.start()
                    self._threads.append(t)

    def close(self) -> None:
        """Stop the workers (searches already queued are answered first)."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout=10)

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        busy = False
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first, self.spec.linger_s if busy else 0.0)
            groups: dict[tuple, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.group, []).append(job)
            for jobs in groups.values():
                self._search(jobs)
            busy = len(batch) > 1  # requests are arriving together: worth waiting a little for the next ones
            if stop:
                return

    def _collect(self, first: _Job, linger: float) -> tuple[list[_Job], bool]:
        batch = [first]
        deadline = time.perf_counter() + linger
        while len(batch) < self.spec.max_batch:
            try:
                wait = deadline - time.perf_counter()
                nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _search(self, jobs: list[_Job]) -> None:
        try:
            head = jobs[0]
            vectors = np.stack([j.vector for j in jobs])
            aug = head.augment
            if head.alone:
                rows = search_vectors(
                    head.index, vectors, k=head.k, exclude=head.exclude, filter=head.filter, augment=aug, unit=True
                )
            else:  # each row leaves out its own items; the shorter ones are the top of the longest
                k = max(j.k for j in jobs)
                own = [j.exclude for j in jobs]
                rows = search_vectors(
                    head.index, vectors, k=k, exclude_per_row=own, filter=head.filter, augment=aug, unit=True
                )
            with self._lock:
                self.batches += 1
                self.queries += len(jobs)
        except BaseException as e:  # handed to every waiting caller (answered as an error there)
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, row in zip(jobs, rows, strict=True):
            j.future.set_result(row[: j.k])
