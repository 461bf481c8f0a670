"""Loading an index's model in the background while the index is read (query start-up, issue 15).

A fresh ``simsearch query INDEX NEW.jpg`` spends a third of its time importing OpenVINO, compiling the cached
model and running it once, and another third importing FAISS, reading the index and decoding the photo. OpenVINO
compiles and infers without holding the GIL, so :func:`preload_embedder` starts the first part in a thread, from
the manifest alone, before the index is opened; the index then adopts the result
(:meth:`PendingEmbedder.result`) only if it embeds exactly as that manifest said (a writer may publish another
generation in between). Vectors are those of the embedder the index would have made itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config.embedding import recorded_settings
from .engines.openvino import openvino_available, precompile
from .store import Manifest, existing_index, read_manifest

if TYPE_CHECKING:
    from .embed import Embedder

log = logging.getLogger("simsearch")


def embedding_of(m: Manifest) -> tuple:
    """What determines how an index embeds new images (two manifests equal here embed alike)."""
    return (m.backbone, m.arch, m.weights_sha256, m.preprocessing, m.dim, (m.extra or {}).get("embedding"))


class PendingEmbedder:
    """The torch-free embedder of a manifest (:func:`~simsearch.embed.cached_embedder_for_index`, with the
    embedder ``options``), being made in a (non-daemon) thread, which then embeds the new ``photos`` with it (the
    query's decode and inference, done beside the caller's imports too: :meth:`embedded`)."""

    def __init__(self, manifest: Manifest, options: dict[str, Any], photos: Sequence[str | Path] = ()):
        self.manifest = manifest
        self.options = dict(options)
        self._embedder: Embedder | None = None
        self._photos = [Path(p).expanduser() for p in photos]
        self._vectors: tuple[list, np.ndarray] | None = None  # (the photos' file stamps, their vectors)
        # OpenVINO is imported here, in the caller's thread: importing holds the GIL wherever it runs; then the
        # one-image model's compile, which does not, starts in a thread of its own before the embedding code (PIL,
        # the engines) is imported: the engine made in the thread below takes it
        openvino_available()
        precompile_for(manifest, self.options)
        from .embed import cached_backbone_of

        # so are the look-ups before the engine (the cache key's package versions, the cached model's files): a
        # few ms here, where in the thread each file read would wait for the GIL behind the caller's imports
        self._backbone = cached_backbone_of(manifest)
        self._thread = threading.Thread(target=self._load, name="simsearch-preload")
        self._thread.start()

    def _load(self) -> None:
        from .embed import cached_embedder_for_index

        try:
            self._embedder = cached_embedder_for_index(self.manifest, cached=self._backbone, **self.options)
            if self._embedder is not None and self._photos:
                stamps = _stamps(self._photos)
                if stamps is not None:
                    self._vectors = (stamps, self._embedder.embed(self._photos))
        except Exception as e:  # the index then makes its embedder itself, and reports what is wrong
            log.debug("preloading the model failed (%s)", e)

    def result(self, manifest: Manifest, options: dict[str, Any]) -> Embedder | None:
        """The embedder, once made, if it embeds as ``manifest`` says with these embedder ``options``; else None."""
        self._thread.join()
        if embedding_of(manifest) != embedding_of(self.manifest) or dict(options) != self.options:
            return None
        return self._embedder

    def embedded(self, embedder: Embedder, images: Sequence) -> np.ndarray | None:
        """The vectors of ``images`` made in the thread, taken once: when ``embedder`` is this load's, ``images``
        are the photos it was given and their files are unchanged since (else None: embed them)."""
        self._thread.join()
        made, self._vectors = self._vectors, None
        if made is None or embedder is not self._embedder or not all(isinstance(i, (str, Path)) for i in images):
            return None
        if [Path(i).expanduser() for i in images] != self._photos or _stamps(self._photos) != made[0]:
            return None
        return made[1]

    def wait(self) -> None:
        self._thread.join()


def precompile_for(manifest: Manifest, options: dict[str, Any]) -> bool:
    """Start compiling the model that :func:`~simsearch.embed.cached_embedder_for_index` makes for ``manifest``
    with the embedder ``options``, when it is the OpenVINO fp32/bf16 model of one fixed batch size
    (:func:`simsearch.engines.openvino.precompile`): whether it was started."""
    engine_options = dict(options.get("engine_options") or {})
    rec = recorded_settings(manifest.extra, manifest.count)
    if set(options) - {"engine_options"} or set(engine_options) - {"hint", "threads", "static_batch"}:
        return False  # other options (engine, precision, batch size...): made as they say
    if rec is None or rec.engine != "openvino" or not engine_options.get("static_batch"):
        return False
    try:
        return precompile(
            manifest.weights_sha256, manifest.arch, manifest.preprocessing["input_size"], rec.precision,
            **engine_options,
        )  # fmt: skip
    except Exception as e:  # the engine compiles it itself, and reports what is wrong
        log.debug("cannot compile the model ahead (%s)", e)
        return False


def _stamps(files: Sequence[Path]) -> list | None:
    """What tells a changed file (None: one cannot be read)."""
    try:
        return [(s.st_ino, s.st_size, s.st_mtime_ns) for s in (f.stat() for f in files)]
    except OSError:
        return None


def outside_roots(manifest: Manifest, image: str | Path) -> bool:
    """Whether ``image`` is a file outside every folder the index was built from, hence surely not an indexed
    photo: a query of it embeds it (an indexed photo's query reads its stored vector and needs no model)."""
    with contextlib.suppress(OSError, RuntimeError):
        p = Path(image).expanduser()
        if p.is_file():
            real = p.resolve()
            return not any(real.is_relative_to(Path(r).resolve()) for r in manifest.roots)
    return False


def preload_embedder(
    index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]
) -> PendingEmbedder | None:
    """Start making the embedder of the index at ``index_path`` when ``images`` includes a new photo (one outside
    the index's folders), and embedding ``images`` when all are new; None when there is none, or the index cannot
    be read (opening it will say why)."""
    try:
        manifest = read_manifest(existing_index(index_path))
    except Exception:
        return None
    new = [outside_roots(manifest, im) for im in images]
    if not any(new):
        return None
    return PendingEmbedder(manifest, options, photos=images if all(new) else ())


# the loads started ahead of their command (start_preload), by command line: taken once by take_preload
_STARTED: dict[str, PendingEmbedder | None] = {}


def _started_key(index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]) -> str:
    return json.dumps([str(index_path), [str(im) for im in images], options], sort_keys=True, default=str)


def start_preload(index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]) -> None:
    """:func:`preload_embedder`, started now for the command that will ask for it with :func:`take_preload` (the
    CLI starts a query's model before the query code is imported)."""
    _STARTED[_started_key(index_path, images, options)] = preload_embedder(index_path, images, options)


def take_preload(
    index_path: str | Path, images: Sequence[str | Path], options: dict[str, Any]
) -> PendingEmbedder | None:
    """The load :func:`start_preload` started for exactly these arguments (once), else :func:`preload_embedder`."""
    key = _started_key(index_path, images, options)
    if key in _STARTED:
        return _STARTED.pop(key)
    return preload_embedder(index_path, images, options)
