"""Embedding on a Ray cluster: ``simsearch index FOLDER --engine ray [--address auto]`` (optional extra ``simsearch[ray]``).

Decoding and embedding run as a Ray Data pipeline::

    paths ──map_batches(decoder actors)──> preprocessed tensors ──map_batches(embedder actors)──> vectors

The embedder stage is an actor pool (one model per actor, ``concurrency`` actors); decoding is a second pool of
CPU actors (each holds only the transform), so on a cluster both spread over the nodes and Ray Data streams
batches between them with backpressure. The driver streams the results back and writes them as
embedding shards (``.npz`` files in a temporary folder beside the index), then merges the shards in file order
into the index: ids, metadata, incremental updates, skipped files and the FAISS build (``--index auto``) are the
same code as the local engine — only the embedding moved. The index build itself stays on the driver; see
docs/scale.md for what scales and for sharded indexes past one machine.

Ray is imported only when this engine is used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .backbones import Backbone
from .errors import SimsearchError

log = logging.getLogger("simsearch")

DECODE_BATCH = 16


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise SimsearchError("--engine ray needs Ray Data: pip install 'simsearch[ray]'") from None
    return ray


def _make_embedder(backbone: Backbone, draft: bool, max_pixels, batch_size: int | None):
    from .embed import Embedder

    return Embedder(
        backbone, engine="torch", precision="fp32", draft=draft, max_pixels=max_pixels, batch_size=batch_size, workers=1
    )


class _Decode:
    """Ray Data task: decode and preprocess a batch of paths (errors become reasons, never exceptions)."""

    def __init__(self, backbone: Backbone, draft: bool, max_pixels, size: int):
        self.embedder = _make_embedder(backbone, draft, max_pixels, None)
        self.size = size

    def __call__(self, batch: dict) -> dict:
        from .errors import ImageError

        shape = (3, self.size, self.size)
        pixels = np.zeros((len(batch["path"]), *shape), np.float32)
        errors = []
        for j, path in enumerate(batch["path"]):
            try:
                t = self.embedder.preprocess(str(path))
                pixels[j] = np.asarray(t, dtype=np.float32)
                errors.append("")
            except ImageError as e:
                msg = str(e)
                errors.append(msg.split(": ", 1)[1] if ": " in msg else msg or "unreadable")
        return {"row": np.asarray(batch["row"]), "pixels": pixels, "error": np.array(errors, dtype=object)}


class _Embed:
    """Ray Data actor: one model per actor; embeds the decoded batches."""

    def __init__(self, backbone: Backbone, draft: bool, max_pixels, batch_size: int, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = _make_embedder(backbone, draft, max_pixels, batch_size)
        self.dim = backbone.dim

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.array([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            vectors[ok] = self.embedder.engine(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {"row": batch["row"], "vector": vectors, "error": batch["error"]}


class RayEmbedder:
    """Stands in for :class:`simsearch.embed.Embedder` in :func:`simsearch.index.build_index` (``embedder=``)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        address: str | None = None,
        draft: bool = True,
        max_pixels=None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        shard_dir: str | Path | None = None,
        num_cpus: int | None = None,
    ):
        self.backbone = backbone
        self.address = address
        self.draft = draft
        self.max_pixels = max_pixels
        self.batch_size = int(batch_size or 32)
        self.concurrency = concurrency
        self.shard_dir = Path(shard_dir) if shard_dir else None
        self.num_cpus = num_cpus
        self._local = _make_embedder(backbone, draft, max_pixels, batch_size)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def settings(self) -> dict:
        """The embedding settings recorded in the manifest: those of the actors' local twin (query time)."""
        return self._local.settings()

    # the query-time path, and tiny inputs, stay local
    def embed(self, sources: Sequence) -> np.ndarray:
        return self._local.embed(sources)

    def _ray(self):
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), **kwargs)
        return ray

    def embed_files(
        self,
        items: Sequence,
        *,
        path_of: Callable[[object], str | Path] = lambda x: x,
        progress: bool = False,
        desc: str = "embedding (ray)",
    ) -> Iterator:
        """Embed ``items`` on Ray; yields :class:`~simsearch.embed.EmbeddedBatch` objects in the items' order."""
        from .embed import EmbeddedBatch, _progress_bar

        if not items:
            return
        ray = self._ray()
        paths = [str(path_of(it)) for it in items]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = self.concurrency or max(1, min(cpus, len(paths) // max(1, self.batch_size) or 1))
        size = int(self.backbone.data_config["input_size"][-1])
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        blocks = max(1, min(len(paths) // DECODE_BATCH, 4 * cpus))
        ds = ray.data.from_items([{"row": i, "path": p} for i, p in enumerate(paths)], override_num_blocks=blocks)
        ds = ds.map_batches(
            _Decode,
            fn_constructor_kwargs={
                "backbone": self.backbone,
                "draft": self.draft,
                "max_pixels": self.max_pixels,
                "size": size,
            },
            batch_size=DECODE_BATCH,
            batch_format="numpy",
            concurrency=max(1, cpus),
            num_cpus=1,
        )
        ds = ds.map_batches(
            _Embed,
            fn_constructor_kwargs={
                "backbone": self.backbone,
                "draft": self.draft,
                "max_pixels": self.max_pixels,
                "batch_size": self.batch_size,
                "threads": 1,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=1,
        )
        shard_dir = self.shard_dir or Path(tempfile.mkdtemp(prefix="simsearch-ray-shards-"))
        shard_dir.mkdir(parents=True, exist_ok=True)
        bar = _progress_bar(len(paths), progress, desc)
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
                b = EmbeddedBatch()
                rows = []
                for j in range(start, min(start + self.batch_size, len(paths))):
                    if errors[j]:
                        b.skipped.append((items[j], errors[j]))
                    else:
                        b.items.append(items[j])
                        rows.append(j)
                b.vectors = np.asarray(vectors[rows], dtype=np.float32) if rows else np.zeros((0, self.dim), np.float32)
                yield b
        finally:
            bar.close()
            if self.shard_dir is None:
                shutil.rmtree(shard_dir, ignore_errors=True)

    def _merge(self, shards: list[Path], n: int):
        """Embedding shards → (vectors in item order (a memory-mapped file), error reasons)."""
        vectors = np.lib.format.open_memmap(
            shards[0].parent / "merged.npy", mode="w+", dtype=np.float32, shape=(n, self.dim)
        )
        errors = [None] * n
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


def ray_embedder(
    roots: Sequence[str | Path],
    out: str | Path | None,
    *,
    backbone: Backbone | str | None = None,
    address: str | None = None,
    batch_size: int | None = None,
    max_pixels=None,
    **kwargs,
) -> RayEmbedder:
    """The :class:`RayEmbedder` for indexing ``roots`` into ``out``: the index's own backbone and decoding settings
    when it exists, else ``backbone`` (default: the default backbone), with draft JPEG decoding like the local
    engine's default for a new index."""
    from .backbones import DEFAULT_BACKBONE, create_backbone
    from .build import check_backbone, default_index_path
    from .store import MANIFEST, read_manifest

    _import_ray()  # fail early, before any model is loaded
    path = Path(out).expanduser() if out is not None else default_index_path(roots)
    existing = read_manifest(path) if (path / MANIFEST).exists() else None
    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    if backbone is None:
        backbone = create_backbone(existing.backbone if existing else DEFAULT_BACKBONE)
    draft = True
    if existing is not None:
        check_backbone(existing, backbone, where=str(path))
        rec = (existing.extra or {}).get("embedding")
        if isinstance(rec, dict) and "draft" in rec and existing.count:
            draft = bool(rec["draft"])
    return RayEmbedder(backbone, address=address, draft=draft, max_pixels=max_pixels, batch_size=batch_size, **kwargs)
