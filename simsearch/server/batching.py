"""Coalescing of concurrent searches into batched FAISS calls.

An exact (Flat) search of one query reads every stored vector: it is bound by memory bandwidth (about 4 ms for
9,000 x 1280 floats on a laptop-class core). A batch of queries reads them once (a matrix product), so eight
queries cost about twice one. The batcher's worker thread takes whatever requests are waiting, searches them
together, and hands each its rows: no added latency when idle (a batch of one), several times the throughput
under load. Once batches of several queries show that requests are arriving together, the worker waits up to
``linger`` seconds for a batch to fill (dynamic batching): a little latency for a lot of throughput.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

log = logging.getLogger("simsearch.server")

MAX_BATCH = 64
LINGER_S = 0.002  # under load, wait this long for more queries to join a batch


class SearchBatcher:
    """``search(index, vector, k)`` from any thread: the ``(scores, ids)`` of the ``k`` nearest items."""

    def __init__(self, max_batch: int = MAX_BATCH, on_start=None, linger: float = LINGER_S):
        self.max_batch = max_batch
        self.linger = linger
        self._on_start = on_start  # called first in the worker thread (per-thread settings such as OpenMP's)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0
        self.queries = 0

    def submit(self, index, vector: np.ndarray, k: int) -> Future:
        """Queue a search of ``vector`` (a unit vector of the index's dim); the future gives ``(scores, ids)``.
        (From async code: ``await asyncio.wrap_future(batcher.submit(...))``, no thread needed to wait.)"""
        fut: Future = Future()
        self._ensure_worker()
        self._queue.put((index, vector, int(k), fut))
        return fut

    def search(self, index, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocks until the worker has searched ``vector``."""
        return self.submit(index, vector, k).result()

    def _ensure_worker(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the search batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="simsearch-search-batcher", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        busy = False
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            deadline = time.perf_counter() + (self.linger if busy else 0.0)
            while len(batch) < self.max_batch:
                try:
                    wait = deadline - time.perf_counter()
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            groups: dict[int, list] = {}
            for entry in batch:  # requests that started before a reload use the index they leased
                groups.setdefault(id(entry[0]), []).append(entry)
            for entries in groups.values():
                self._search(entries)
            busy = len(batch) > 1  # requests are arriving together: worth waiting a little for the next ones
            if stop:
                return

    def _search(self, entries: list) -> None:
        index = entries[0][0]
        try:
            vectors = np.ascontiguousarray(np.stack([e[1] for e in entries]), dtype=np.float32)
            k = max(1, min(max(e[2] for e in entries), len(index)))
            scores, ids = index.faiss.search(vectors, k)
            self.batches += 1
            self.queries += len(entries)
        except Exception as e:  # handed to every waiting request (answered as an error there)
            for *_, fut in entries:
                fut.set_exception(e)
            return
        for row, (_, _, want, fut) in enumerate(entries):
            fut.set_result((scores[row, :want], ids[row, :want]))
