"""The ``ray`` engine: decoding and embedding as a Ray Data pipeline (optional extra ``simsearch[ray]``).

``build_index(..., engine="ray")`` from Python or ``simsearch index FOLDER --engine ray [--address auto]``::

    paths ──map_batches(decoder actors)──> preprocessed arrays ──map_batches(embedder actors)──> vectors

The embedder stage is an actor pool (one torch fp32 model per actor, ``concurrency`` actors); decoding is a second
pool of CPU actors (each holds only the :class:`~simsearch.engines.transform.Preprocessor`), so on a cluster both
spread over the nodes and Ray Data streams batches between them with backpressure. The driver streams the results
back and writes them as embedding shards (``.npz`` files in a temporary folder), then merges them in path order:
ids, metadata, incremental updates, skipped files and the FAISS build stay the same code as with a local engine.
See docs/scale.md for what scales and for sharded indexes past one machine.

The vectors are those of the torch fp32 reference (what :meth:`RayEngine.settings` records), so the engine may
add to an index embedded by any engine (the index keeps its recorded settings, which query time uses). Small
inputs (``engine(batch)``, e.g. query images) run in-process. Ray is imported only when the engine is made.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import Backbone
from ..errors import ImageError, SimsearchError
from ..progress import progress_bar
from ..system import cpu_count
from .protocol import Batch
from .torch import TorchEngine
from .transform import Preprocessor

log = logging.getLogger("simsearch")

DECODE_BATCH = 16


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a :class:`SimsearchError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise SimsearchError("the ray engine needs Ray Data: pip install 'simsearch[ray]'") from None
    return ray


def _reason(e: ImageError) -> str:
    msg = str(e)
    return (msg.split(": ", 1)[1] if ": " in msg else msg) or "unreadable"


class _Decode:
    """Ray Data task: decode and preprocess a batch of paths (errors become reasons, never exceptions)."""

    def __init__(self, preprocess: Preprocessor):
        self.preprocess = preprocess

    def __call__(self, batch: dict) -> dict:
        size = self.preprocess.input_size
        pixels = np.zeros((len(batch["path"]), 3, size, size), np.float32)
        errors = []
        for j, path in enumerate(batch["path"]):
            try:
                pixels[j] = np.asarray(self.preprocess(str(path)), dtype=np.float32)
                errors.append("")
            except ImageError as e:
                errors.append(_reason(e))
        return {"row": np.asarray(batch["row"]), "pixels": pixels, "error": np.array(errors, dtype=object)}


class _Embed:
    """Ray Data actor: one model per actor; embeds the decoded batches."""

    def __init__(self, backbone: Backbone, batch_size: int, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.engine = TorchEngine(backbone, "fp32", batch_size)
        self.dim = backbone.dim

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            vectors[ok] = self.engine(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {"row": batch["row"], "vector": vectors, "error": batch["error"]}


class RayEngine:
    """Embeds files on a Ray cluster (``address``: ``auto`` for the running one; default: a local instance with
    ``num_cpus`` CPUs). ``concurrency`` embedder actors (default: one per CPU, at most one per batch);
    ``shard_dir`` keeps the embedding shards (default: a temporary folder, removed afterwards)."""

    name = "ray"

    def __init__(
        self,
        backbone: Backbone,
        precision: str = "fp32",
        batch_size: int | None = None,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        shard_dir: str | Path | None = None,
        num_cpus: int | None = None,
    ):
        if precision not in ("auto", "fp32"):
            raise SimsearchError(f"the ray engine embeds in fp32 (torch on every actor), not {precision}")
        self.backbone = backbone
        self.local = TorchEngine(backbone, "fp32", batch_size)  # in-process calls, and what the vectors equal
        self.precision = "fp32"
        self.batch_size = self.local.batch_size
        self.address = address
        self.concurrency = concurrency
        self.shard_dir = Path(shard_dir) if shard_dir else None
        self.num_cpus = num_cpus

    def settings(self) -> dict[str, str]:
        """The vectors are the torch fp32 reference's, and that is what query time uses."""
        return self.local.settings()

    def __call__(self, batch: Batch) -> np.ndarray:
        return self.local(batch)

    def _ray(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus or cpu_count(), **kwargs)
        return ray

    def embed_paths(
        self, paths: Sequence[str], preprocess: Preprocessor, *, progress: bool = False
    ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        """Embed files on Ray; yields ``(vectors, errors)`` for runs of :attr:`batch_size` paths, in order."""
        if not paths:
            return
        ray = self._ray()
        paths = [str(p) for p in paths]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = self.concurrency or max(1, min(cpus, len(paths) // max(1, self.batch_size) or 1))
        ray.data.DataContext.get_current().enable_progress_bars = bool(progress)
        blocks = max(1, min(len(paths) // DECODE_BATCH, 4 * cpus))
        ds = ray.data.from_items([{"row": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=blocks)
        ds = ds.map_batches(
            _Decode,
            fn_constructor_kwargs={"preprocess": preprocess},
            batch_size=DECODE_BATCH,
            batch_format="numpy",
            concurrency=max(1, cpus),
            num_cpus=1,
        )
        ds = ds.map_batches(
            _Embed,
            fn_constructor_kwargs={"backbone": self.backbone, "batch_size": self.batch_size, "threads": 1},
            batch_size=self.batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=1,
        )
        shard_dir = self.shard_dir or Path(tempfile.mkdtemp(prefix="simsearch-ray-shards-"))
        shard_dir.mkdir(parents=True, exist_ok=True)
        bar = progress_bar(len(paths), "embedding (ray)", unit="img", enabled=progress, dynamic_ncols=True)
        try:
            shards = []
            for n, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="numpy")):
                f = shard_dir / f"shard-{n:06d}.npz"
                np.savez(f, row=batch["row"], vector=batch["vector"], error=np.asarray(batch["error"], dtype=str))
                shards.append(f)
                bar.update(len(batch["row"]))
            bar.close()
            vectors, errors = self._merge(shards, len(paths))
            for start in range(0, len(paths), self.batch_size):
                end = min(start + self.batch_size, len(paths))
                yield np.array(vectors[start:end], dtype=np.float32), errors[start:end]
        finally:
            bar.close()
            if self.shard_dir is None:
                shutil.rmtree(shard_dir, ignore_errors=True)

    def _merge(self, shards: list[Path], n: int) -> tuple[np.ndarray, list[str | None]]:
        """Embedding shards → (vectors in path order (a memory-mapped file), error reasons)."""
        vectors = np.lib.format.open_memmap(
            shards[0].parent / "merged.npy", mode="w+", dtype=np.float32, shape=(n, self.backbone.dim)
        )
        errors: list[str | None] = [None] * n
        seen = np.zeros(n, dtype=bool)
        for f in shards:
            with np.load(f, allow_pickle=False) as z:
                rows = z["row"].astype(np.int64)
                vectors[rows] = z["vector"]
                seen[rows] = True
                for r, e in zip(rows, z["error"], strict=True):
                    errors[int(r)] = str(e) or None
        if not seen.all():
            raise SimsearchError(f"the Ray pipeline returned {int(seen.sum())} of {n} images; nothing was lost, re-run")
        return vectors, errors

    def __repr__(self) -> str:
        return f"<RayEngine {self.backbone.name} fp32 batch={self.batch_size} address={self.address or 'local'}>"


def create(backbone: Backbone, precision: str, batch_size: int | None, **options: Any) -> RayEngine:
    """The registry's factory (``options``: ``address``, ``concurrency``, ``shard_dir``, ``num_cpus``)."""
    import_ray()  # a clear message before anything else
    return RayEngine(backbone, precision, batch_size, **options)
