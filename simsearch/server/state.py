"""The service's state: the opened index (swappable by a reload), the searcher, the embedder, caches, settings.

Searches run in worker threads or wait in the :class:`~simsearch.searcher.Searcher` (FAISS searches and SQLite
reads are safe to share). Image embedding uses ``spec.embed_threads`` cores per call (one by default: inference
then runs in the calling thread), as many calls at a time as fill the cores. Live writes' photos are embedded by
one background thread, and the journal folded by another, both ``spec.background_nice`` steps nicer than the
searches: when the CPU is contended searches are served first. A reload opens
the newer saved index beside the current one and swaps them; requests in flight finish on the index they started
with, which is closed once they are done.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from ..compact import compact_index, truncate_journal
from ..config.serve import ServeSpec
from ..errors import ImageError, IndexLockedError, SimsearchError
from ..gallery import thumbnail_jpeg
from ..images import load_image
from ..index import Index, open_index
from ..searcher import Searcher
from ..store import MANIFEST, read_manifest
from ..system import cpu_count, lower_thread_priority

log = logging.getLogger("simsearch.server")

_thread_state = threading.local()
_PILLOW_BOMB = re.compile(r"Image size \((\d+) pixels\) exceeds limit of \d+ pixels")


class _Lease:
    __slots__ = ("index", "retired", "users")

    def __init__(self, index: Index):
        self.index, self.users, self.retired = index, 0, False


class ServiceState:
    """The opened index (swappable by :meth:`reload`), the searcher, the embedder and the service's settings."""

    def __init__(self, index_path: str | Path, spec: ServeSpec | None = None, *, backbone=None, **settings):
        self.spec = replace(spec or ServeSpec(), **settings)
        if self.spec.faiss_threads:
            # Requests run in parallel threads: one OpenMP thread per search is fastest. Several per search make
            # OpenMP teams spin against each other (on a busy machine a search of a 35-item index took 35 ms
            # with two threads, 4 ms with one). Batches of 3+ queries (see Searcher) use FAISS's matrix-product
            # path, which reads the stored vectors once per batch. Both settings are process-wide.
            faiss.omp_set_num_threads(int(self.spec.faiss_threads))
            faiss.cvar.distance_compute_blas_threshold = 3
        self.path = Path(index_path).expanduser()
        self._lock = threading.Lock()  # guards the current lease and users counts
        self._reload_lock = threading.Lock()
        threads = self.spec.embed_threads
        self._embed_slots = threading.BoundedSemaphore(max(1, cpu_count() // threads) if threads else 1)
        self._embed_lock = threading.Lock()  # creating a model
        self._write_embedder = ThreadPoolExecutor(  # live writes' photos, at background priority
            1, thread_name_prefix="simsearch-embed-writes", initializer=self._background_thread
        )
        self._decode_slots = threading.BoundedSemaphore(4)  # bounds the memory of decoded uploads in flight
        self._backbone = backbone  # given by the caller: used again for the indexes that reloads open
        self._warm = False  # the embedder has been created: reloads create the new index's before swapping
        self._current = _Lease(self._configure(open_index(self.path, backbone=backbone)))
        self._manifest_mtime = self._mtime()
        self._thumbs: OrderedDict = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._labels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._compactor: threading.Thread | None = None
        self._compact_now = threading.Event()
        self.searcher = Searcher(self.spec.batching, on_start=self.thread_setup)
        self.started = time.time()

    # -- settings read by the routes
    @property
    def max_upload_bytes(self) -> int:
        return self.spec.max_upload_bytes

    @property
    def max_pixels(self) -> int:
        return self.spec.max_pixels

    @property
    def allow_reload(self) -> bool:
        return self.spec.allow_reload or bool(self.spec.watch_seconds)

    # -- the index, with reload
    def _configure(self, index: Index) -> Index:
        if self.spec.embed_threads:  # OpenVINO (other engines ignore it): one stream of this many threads
            index.embedder_options["engine_options"] = {"threads": int(self.spec.embed_threads), "hint": "latency"}
        return index

    def _background_thread(self) -> None:
        """Run first in the threads that embed live writes and fold the journal: nicer than the searches."""
        self.thread_setup()
        lower_thread_priority(self.spec.background_nice)

    def thread_setup(self) -> None:
        """OpenMP's thread count is per calling thread: set it in each thread that searches (once)."""
        n = self.spec.faiss_threads
        if n and getattr(_thread_state, "faiss_threads", None) != n:
            faiss.omp_set_num_threads(int(n))
            _thread_state.faiss_threads = n

    @contextmanager
    def index(self):
        """The current index, kept open for the duration of the ``with`` block even if a reload happens."""
        self.thread_setup()
        with self._lock:
            lease = self._current
            lease.users += 1
        try:
            yield lease.index
        finally:
            with self._lock:
                lease.users -= 1
                close = lease.retired and lease.users == 0
            if close:
                lease.index.close()

    @property
    def current(self) -> Index:
        """The current index, without a lease (for quick reads of its manifest)."""
        return self._current.index

    def _mtime(self) -> int | None:
        try:
            return (self.path / MANIFEST).stat().st_mtime_ns
        except OSError:
            return None

    def reload(self, *, force: bool = False) -> bool:
        """Open the saved index again if it is newer than the one served (or ``force``); True if swapped."""
        with self._reload_lock:
            mtime = self._mtime()
            manifest = read_manifest(self.path)
            cur = self._current.index
            same = manifest.generation == cur.manifest.generation and manifest.created == cur.manifest.created
            if same and not force:
                self._manifest_mtime = mtime
                return False
            new = self._configure(open_index(self.path))
            if self._backbone is not None and cur.manifest.weights_sha256 == new.manifest.weights_sha256:
                try:  # the caller's model, for the same weights
                    new.set_backbone(self._backbone)
                except SimsearchError:
                    pass
            if self._warm and not new.share_embedder(cur):  # the new index's first upload should not wait
                try:
                    with self._embed_lock:
                        new.embedder  # noqa: B018 - creates the model
                except SimsearchError as e:
                    log.warning("image uploads will fail: %s", e)
            with self._lock:
                old = self._current
                self._current = _Lease(new)
                old.retired = True
                close = old.users == 0
            if close:
                old.index.close()
            self._manifest_mtime = mtime
            with self._thumb_lock:
                self._thumbs.clear()
            log.info("reloaded %s: generation %d, %d items", self.path, new.manifest.generation, len(new))
            return True

    def start_watching(self) -> None:
        if not self.spec.watch_seconds or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="simsearch-index-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.spec.watch_seconds):
            if self._mtime() != self._manifest_mtime:
                try:
                    self.reload()
                except Exception as e:  # keep serving the current index; try again on the next change
                    log.warning("could not reload %s: %s", self.path, e)

    # -- live writes: folded into the index in the background
    def writes_made(self, pending: int) -> None:
        """Called after live writes: enough of them pending starts a compaction at once."""
        if pending >= self.spec.compact_writes:
            self._compact_now.set()

    def start_compacting(self) -> None:
        if self.spec.read_only or self._compactor is not None:
            return
        self._stop.clear()
        self._compactor = threading.Thread(target=self._compact_loop, name="simsearch-compact", daemon=True)
        self._compactor.start()

    def _compact_loop(self) -> None:
        self._background_thread()
        while not self._stop.is_set():
            self._compact_now.wait(self.spec.compact_seconds)
            self._compact_now.clear()
            if self._stop.is_set():
                return
            try:
                self.compact_once()
            except IndexLockedError:
                pass  # an `index` run is writing: fold next time
            except Exception as e:  # keep serving; the writes stay in the journal
                log.warning("could not fold live writes into %s: %s", self.path, e)

    def compact_once(self) -> int:
        """Fold the pending live writes into a new generation and serve it; returns how many were folded.

        The folded rows stay in the journal until the new generation is served: searches of the old one keep
        reading them meanwhile (none finds its generation stale and reopens it on the request path)."""
        if not self.current.pending_writes():
            return 0
        r = compact_index(self.path, truncate=False)
        if r["folded"]:
            log.info("folded %d live writes into generation %d", r["folded"], r["generation"])
            try:
                self.reload()
            finally:
                truncate_journal(self.path, r["delta_seq"])
        return int(r["folded"])

    def close(self) -> None:
        self.searcher.close()
        self._write_embedder.shutdown(wait=True, cancel_futures=True)
        self._stop.set()
        self._compact_now.set()
        if self._compactor is not None:
            self._compactor.join(timeout=60)
            self._compactor = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        with self._lock:
            lease = self._current
            lease.retired = True
            close = lease.users == 0
        if close:
            lease.index.close()

    # -- reading
    def label_counts(self, index: Index) -> list[tuple[str | None, int]]:
        """``[(label, count)]`` of the index, most frequent first (computed once per opened index)."""
        key = (index.manifest.generation, index.manifest.updated)  # a live index moves to newer generations
        cached = self._labels.get(index)
        if cached is None or cached[0] != key:
            tally = index.label_counts()
            counts = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
            cached = self._labels[index] = (key, counts)
        return cached[1]

    def redact(self, text: str) -> str:
        """``text`` without the server's absolute paths (index folder, indexed roots), unless they are exposed."""
        if self.spec.expose_paths:
            return text
        index = self.current
        places = [(str(index.path), "<index>")]
        for n, root in enumerate(index.manifest.roots):
            places += [(root, f"<root {n}>"), (os.path.realpath(root), f"<root {n}>")]
        for place, name in sorted(places, key=lambda p: -len(p[0])):
            if place and place != os.sep:
                text = text.replace(place, name)
        return text

    # -- embedding
    def preload(self) -> None:
        """Load the backbone now (otherwise the first upload does). A backbone that cannot be loaded here only
        disables uploads (they answer with the reason); searches by vector or item still work."""
        try:
            with self.index() as index, self._embed_lock:
                index.embedder  # noqa: B018 - creates the model
                self._warm = True
        except SimsearchError as e:
            log.warning("image uploads will fail: %s", e)

    def embed_image(self, index: Index, data: bytes):
        """Decode (within the pixel limit) and embed one uploaded image; raises ImageError with the reason.

        Decoding runs in parallel; inference in as many calls at a time as fill the cores.
        """
        if not data:
            raise ImageError("the uploaded file is empty")
        limit = self.spec.max_pixels
        with self._decode_slots:
            try:
                img = load_image(data, max_pixels=limit)
            except ImageError as e:  # Pillow's own bomb limit is met first for huge images: quote ours
                bomb = _PILLOW_BOMB.search(str(e))
                if bomb is None:
                    raise
                raise ImageError(
                    f"image: {int(bomb.group(1)):,} pixels exceeds the pixel limit ({limit:,}) of this service"
                ) from None
        with self._embed_slots:
            with self._embed_lock:  # the first call creates the model (once)
                index.embedder  # noqa: B018
                self._warm = True
            return index.embed([img])[0]

    def embed_write_photos(self, index: Index, photos: list[bytes]) -> np.ndarray:
        """The vectors of a live write's photos ``(n, dim)``, embedded by the background-priority thread (this
        thread waits for them)."""
        return self._write_embedder.submit(
            lambda: np.vstack([self.embed_image(index, data) for data in photos])
        ).result()

    # -- files and thumbnails
    def item_file(self, index: Index, item_id: int) -> Path:
        """The item's file (the library refuses files that now lead outside their indexed folder)."""
        return index.item_file(item_id)

    def thumbnail(self, index: Index, item_id: int, size: int) -> bytes:
        """A JPEG of the item's file (checked on every call: a file deleted or moved away is not served)."""
        path = index.item_file(item_id)
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, int(size))
        with self._thumb_lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        try:
            data = thumbnail_jpeg(path, size, max_pixels=max(self.spec.max_pixels, 100_000_000))
        except ImageError as e:
            raise ImageError(
                f"the image of item {item_id} cannot be read: {str(e).removeprefix(f'{path}: ')}"
            ) from None
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self.spec.thumbnail_cache:
                self._thumbs.popitem(last=False)
        return data
