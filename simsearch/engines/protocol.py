"""The engine contract: what the :class:`~simsearch.embed.Embedder` calls, as :class:`typing.Protocol` classes.

An engine runs a backbone on a batch of preprocessed images, ``(B, 3, H, W)`` float32 (a torch tensor or a numpy
array, already normalised by the backbone's transform), and returns L2-normalised ``(B, dim)`` float32 vectors.
Any plain callable doing that is accepted (recorded as ``custom``); a full :class:`Engine` also says what it is.

Two optional abilities, found by their method (``stream``, ``embed_paths``):

* :class:`StreamingEngine` keeps several batches in flight (OpenVINO's asynchronous requests): the Embedder
  hands it ``(key, batch)`` pairs while decoding the next ones.
* :class:`FileEngine` reads the files itself (e.g. a Ray cluster decoding on many machines): the Embedder hands
  it the paths and a picklable :class:`~simsearch.engines.transform.Preprocessor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..backbones import Backbone
from .transform import Preprocessor

Batch = Any  # a (B, 3, H, W) float32 torch tensor or numpy array
EngineCallable = Callable[[Batch], np.ndarray]


@runtime_checkable
class Engine(Protocol):
    """An inference engine: ``engine(batch) -> (B, dim)`` unit vectors, plus what an index records about it."""

    name: str  # registry name, e.g. "openvino"
    precision: str  # the precision actually used: "fp32" or "bf16"
    batch_size: int  # preferred images per batch

    def __call__(self, batch: Batch) -> np.ndarray: ...

    def settings(self) -> dict[str, str]:
        """``{"engine": ..., "precision": ...}``: the kind of vectors it makes (recorded in a manifest)."""
        ...


class StreamingEngine(Engine, Protocol):
    def stream(self, batches: Iterable[tuple[Any, Batch | None]]) -> Iterator[tuple[Any, np.ndarray]]:
        """Infer ``(key, batch)`` pairs (``None``: an empty batch) and yield ``(key, vectors)`` in the order given."""
        ...


class FileEngine(Engine, Protocol):
    def embed_paths(
        self, paths: Sequence[str], preprocess: Preprocessor, *, progress: bool = False
    ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """Decode, preprocess and embed image files; yields ``(vectors, errors)`` for consecutive runs of
        ``paths`` in order: one row per path (zeros where ``errors[i]`` gives the reason it failed, else None)."""
        ...


class EngineFactory(Protocol):
    """What :func:`~simsearch.engines.register_engine` takes: builds an engine for a backbone.

    ``precision`` is already resolved (``fp32`` or ``bf16``); ``batch_size`` None means the engine's own choice;
    ``options`` are engine-specific keyword arguments (e.g. ``address`` for ``ray``), passed through
    ``create_engine(..., **options)``.
    """

    def __call__(self, backbone: Backbone, precision: str, batch_size: int | None, **options: Any) -> Engine: ...


def engine_settings(engine: object) -> dict[str, str]:
    """What an index records about the engine that embedded it (``custom`` for a plain callable)."""
    settings = getattr(engine, "settings", None)
    if callable(settings):
        return dict(settings())
    return {"engine": str(getattr(engine, "name", "custom")), "precision": str(getattr(engine, "precision", "fp32"))}
