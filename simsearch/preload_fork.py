"""Embedding a query's one new photo in a forked process while the query code loads (issue 15: start-up).

Python's imports hold the GIL, so the model thread of :mod:`simsearch.preload` imports numpy, OpenVINO and the
embedding code one module at a time with the query's own imports (numpy, FAISS, the index code): on two cores, only
the model's compile ran beside them. ``simsearch query INDEX NEW.jpg`` therefore forks early, while the process is
still small (click loaded, no thread, no numpy): the child does what that thread would
(:func:`~simsearch.embed.cached_embedder_for_index`, with the query's embedder options, then ``Embedder.embed``)
and writes the photo's vector to a pipe, while the parent imports the query code and opens the index on the other
core. The parent takes the vector (:meth:`ForkedEmbedding.vectors`) only if it was made for the embedding and the
embedder options of the index it opened, for the same photo, unchanged since; otherwise, and whenever the child
made none (no cached model, a photo it cannot decode, an indexed photo), the parent embeds the photo itself as
before, so results and error messages are the command's usual ones.

The child never runs the command: it writes its result (or nothing) and leaves with ``os._exit``, its standard
streams on ``/dev/null`` (a pipe reading the command's output sees its end when the command ends). It dies with
its parent (``PR_SET_PDEATHSIG`` on Linux, and it checks its parent between steps); the parent reaps it, and kills
it at exit if the vector was never asked for. This module imports nothing heavy: the parent loads it before numpy.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import STARTUP
from .system import cpu_count

if TYPE_CHECKING:
    import numpy as np

    from .store import Manifest

# loaded by a process before it forks: the child would inherit their threads (BLAS, OpenMP, OpenVINO's) or state
NOT_BEFORE_FORK = ("numpy", "faiss", "openvino", "torch", "PIL")


def embedding_of(m: Manifest) -> tuple:
    """What determines how an index embeds new images (two manifests equal here embed alike)."""
    return (m.backbone, m.arch, m.weights_sha256, m.preprocessing, m.dim, (m.extra or {}).get("embedding"))


def embedding_key(m: Manifest, options: dict[str, Any]) -> str:
    """:func:`embedding_of` and the embedder ``options`` as one string (compared across the fork)."""
    return json.dumps([embedding_of(m), options], sort_keys=True, default=str)


def outside_roots(manifest: Manifest, image: str | Path) -> bool:
    """Whether ``image`` is a file outside every folder the index was built from, hence surely not an indexed
    photo: a query of it embeds it (an indexed photo's query reads its stored vector and needs no model)."""
    with contextlib.suppress(OSError, RuntimeError):
        p = Path(image).expanduser()
        if p.is_file():
            real = p.resolve()
            return not any(real.is_relative_to(Path(r).resolve()) for r in manifest.roots)
    return False


def file_stamps(files: Sequence[Path]) -> list | None:
    """What tells a changed file (None: one cannot be read)."""
    try:
        return [[s.st_ino, s.st_size, s.st_mtime_ns] for s in (f.stat() for f in files)]
    except OSError:
        return None


FORK_MODES = ("idle", "always", "never")
LOADAVG = Path("/proc/loadavg")


def can_fork() -> bool:
    """Whether this process may fork its model's load: Linux (``fork`` without an ``exec`` is safe there), at
    least two usable CPUs, one thread, none of :data:`NOT_BEFORE_FORK` loaded, and :data:`STARTUP` allows it
    (``fork_query_model``: "always", or "idle" when :func:`cpu_idle`)."""
    mode = STARTUP.fork_query_model
    if mode not in FORK_MODES:
        raise ValueError(f"fork_query_model must be one of {', '.join(FORK_MODES)}, not {mode!r}")
    return (
        mode != "never"
        and sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and threading.active_count() == 1
        and not any(m in sys.modules for m in NOT_BEFORE_FORK)
        and cpu_count() >= 2
        and (mode == "always" or cpu_idle())
    )


def cpu_idle() -> bool:
    """Whether fewer tasks are running now than this process may use CPUs (this process counted): the kernel's
    count of runnable tasks (``/proc/loadavg``), a snapshot, not an average. False where it cannot be read."""
    try:
        running = int(LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return False
    return running < cpu_count()


class ForkedEmbedding:
    """A child process embedding ``image`` for the index at ``index_path`` (see the module's doc)."""

    def __init__(self, pid: int, fd: int, image: Path, options: dict[str, Any]):
        self.pid, self._fd, self.image, self.options = pid, fd, image, dict(options)
        self._reaped = False
        atexit.register(self.close)

    def vectors(self, manifest: Manifest, options: dict[str, Any], images: Sequence) -> np.ndarray | None:
        """The vectors of ``images`` made by the child (taken once: then None), when ``images`` is its one photo,
        unchanged since, and it embedded it as ``manifest`` and ``options`` say; else None (embed them)."""
        data = self._collect()
        if data is None or len(images) != 1 or not isinstance(images[0], (str, Path)):
            return None
        if Path(images[0]).expanduser() != self.image:
            return None
        header, _, raw = data.partition(b"\n")
        try:
            made = json.loads(header)
        except ValueError:
            return None
        if made.get("key") != embedding_key(manifest, dict(options)) or made.get("stamps") != file_stamps([self.image]):
            return None
        import numpy as np

        shape = tuple(made["shape"])
        if len(raw) != int(np.prod(shape)) * np.dtype(made["dtype"]).itemsize:
            return None
        return np.frombuffer(raw, dtype=made["dtype"]).reshape(shape).copy()

    def _collect(self) -> bytes | None:
        """Everything the child wrote (None: taken already, or the child ran out of time), the child reaped."""
        if self._fd < 0:
            return None
        chunks, deadline = [], time.monotonic() + STARTUP.fork_timeout
        try:
            import select

            while True:
                ready, _, _ = select.select([self._fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:  # stuck: the parent embeds the photo itself
                    self.close()
                    return None
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            self.close()
            return None
        os.close(self._fd)
        self._fd = -1
        self._reap(block=False)  # it is leaving (os._exit); reaped here or at exit
        return b"".join(chunks)

    def _reap(self, block: bool) -> None:
        if self._reaped:
            return
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return
        self._reaped = True

    def close(self) -> None:
        """Stop the child if it still runs (its vector not taken), close the pipe, reap it (at exit: a child that
        wrote its vector has left long before). Idempotent."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            os.close(self._fd)
            self._fd = -1
        self._reap(block=True)


def fork_embedding(index_path: str | Path, image: str | Path, options: dict[str, Any]) -> ForkedEmbedding | None:
    """A child embedding the photo ``image`` (an existing file) for the index at ``index_path`` with the embedder
    ``options``, when this process may fork (:func:`can_fork`); else None."""
    photo = Path(image).expanduser()
    if not can_fork() or not photo.is_file():
        return None
    parent = os.getpid()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            _quiet_stdio()
            code = _embed_in_child(w, parent, Path(index_path).expanduser(), photo, options)
        finally:
            os._exit(code)
    os.close(w)
    return ForkedEmbedding(pid, r, photo, options)


def _quiet_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _die_with(parent: int) -> None:
    """Be killed when the parent dies (Linux), and leave now if it already did."""
    with contextlib.suppress(Exception):
        import ctypes  # loaded by numpy already

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _embed_in_child(fd: int, parent: int, index: Path, photo: Path, options: dict[str, Any]) -> int:
    """The child's work: the photo's vector on ``fd`` (header line, then the raw array), or nothing."""
    from .embed import cached_embedder_for_index
    from .store.manifest import read_manifest

    _die_with(parent)
    manifest = read_manifest(index)
    if not outside_roots(manifest, photo):
        return 0
    embedder = cached_embedder_for_index(manifest, **options)
    if embedder is None:
        return 0
    stamps = file_stamps([photo])
    if os.getppid() != parent:
        return 1
    vectors = embedder.embed([photo])
    header = {
        "key": embedding_key(manifest, dict(options)),
        "stamps": stamps,
        "shape": list(vectors.shape),
        "dtype": str(vectors.dtype),
    }
    data = json.dumps(header).encode() + b"\n" + vectors.tobytes()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)
    return 0


# the children started ahead of their command (start_fork), by command line: taken once by take_fork
_FORKED: dict[str, ForkedEmbedding] = {}


def started_key(index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]) -> str:
    return json.dumps([str(index_path), [str(im) for im in images], options], sort_keys=True, default=str)


def start_fork(index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]) -> bool:
    """:func:`fork_embedding` for a query of one photo, kept for :func:`take_fork`; whether a child was started."""
    if len(images) != 1:
        return False
    forked = fork_embedding(index_path, images[0], options)
    if forked is not None:
        _FORKED[started_key(index_path, images, options)] = forked
    return forked is not None


def take_fork(index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]) -> ForkedEmbedding | None:
    """The child :func:`start_fork` started for exactly these arguments (once), else None."""
    return _FORKED.pop(started_key(index_path, images, options), None)
