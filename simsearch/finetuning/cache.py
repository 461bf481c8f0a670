"""Cache of what the frozen part of the network makes of each image, so training runs only the trainable part.

One small ``.npz`` per image and view, keyed by the file (path, size, mtime) under a folder keyed by everything
that determines the output (base weights, cut point, preprocessing, augmentation settings and seed)::

    <cache_dir>/<model key>/v0/<file key>.npz        # view 0: the eval transform (what index/query see)
    <cache_dir>/<model key>/aug-<key>-v3/<...>.npz   # view 3: a fixed random augmentation of the image

Each file holds ``h`` (the prefix output, float16; absent when nothing is cut) and ``p`` (the frozen pooled
features, float32). Files are written atomically as they are computed, so an interrupted run keeps its work and
several runs over overlapping images (e.g. different class subsets) share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ImageError
from ..images import DEFAULT_MAX_PIXELS, load_image
from ..progress import progress_bar
from .model import Prefix, Suffix, autocast

log = logging.getLogger("simsearch")


def file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def augment_transform(data_config: dict, scale: tuple[float, float] = (0.35, 1.0), jitter: float = 0.2):
    """Retrieval-friendly augmentation: random resized crop (mild), horizontal flip, mild colour jitter."""
    from torchvision import transforms as T  # noqa: N812

    size = int(data_config["input_size"][-1])
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "nearest": T.InterpolationMode.NEAREST}.get(
        data_config.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC
    )
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, ratio=(3 / 4, 4 / 3), interpolation=interp),
            T.RandomHorizontalFlip(),
            T.ColorJitter(jitter, jitter, jitter),
            T.ToTensor(),
            T.Normalize(data_config["mean"], data_config["std"]),
        ]
    )


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and transforms images; a file that cannot be read yields a zero tensor and its reason."""

    def __init__(self, paths: Sequence[Path], transform, input_size, seeds: Sequence[int] | None = None):
        self.paths, self.transform, self.seeds = list(paths), transform, seeds
        self.shape = tuple(int(s) for s in input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = load_image(self.paths[i], max_pixels=DEFAULT_MAX_PIXELS)
        except ImageError as e:
            return i, torch.zeros(self.shape), str(e)
        if self.seeds is not None:
            torch.manual_seed(int(self.seeds[i]))
        return i, self.transform(img), ""


def loader(dataset, batch_size: int, workers: int, shuffle: bool = False, generator=None):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
    )


class FeatureCache:
    """Per-image cached prefix outputs and pooled features for one base model and cut point."""

    def __init__(self, root: Path, *, base_sha: str, arch: str, cut: int | None, data_config: dict, precision: str):
        self.key = {"base": base_sha, "arch": arch, "cut": cut, "data_config": data_config, "precision": precision}
        self.dir = Path(root) / _digest(self.key)
        self.cut = cut
        self.dir.mkdir(parents=True, exist_ok=True)
        card = self.dir / "key.json"
        if not card.exists():
            card.write_text(json.dumps(self.key, indent=2) + "\n")

    def view_dir(self, view: int, aug: dict | None) -> Path:
        name = "v0" if view == 0 else f"aug-{_digest(aug)}-v{view}"
        d = self.dir / name
        d.mkdir(exist_ok=True)
        return d

    def features(
        self,
        paths: Sequence[Path],
        keys: Sequence[str],
        *,
        view: int,
        model,
        data_config: dict,
        aug: dict | None = None,
        batch_size: int = 32,
        workers: int = 0,
        precision: str = "fp32",
        progress: bool = False,
        desc: str = "caching features",
        load_h: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray, dict[int, str]]:
        """``(h, p, failed)`` for ``paths``: prefix outputs (None when uncut or not ``load_h``), pooled features,
        unreadable files.

        Rows of ``failed`` images are zero. Missing entries are computed (frozen model, eval mode) and stored.
        """
        d = self.view_dir(view, aug)
        files = [d / f"{k}.npz" for k in keys]
        todo = [i for i, f in enumerate(files) if not f.exists()]
        failed: dict[int, str] = {}
        if todo:
            failed = self._compute(
                [paths[i] for i in todo], [files[i] for i in todo], view=view, model=model, data_config=data_config,
                aug=aug, batch_size=batch_size, workers=workers, precision=precision, progress=progress, desc=desc,
            )  # fmt: skip
            failed = {todo[i]: reason for i, reason in failed.items()}
        h = p = None
        for i, f in enumerate(files):
            if i in failed:
                continue
            with np.load(f) as z:
                if p is None:
                    p = np.zeros((len(files), *z["p"].shape), np.float32)
                    if "h" in z and load_h:
                        h = np.zeros((len(files), *z["h"].shape), np.float16)
                p[i] = z["p"]
                if h is not None:
                    h[i] = z["h"]
        if p is None:
            p = np.zeros((len(files), 0), np.float32)
        return h, p, failed

    def _compute(
        self,
        paths: Sequence[Path],
        files: Sequence[Path],
        *,
        view: int,
        model: Any,
        data_config: dict,
        aug: dict | None,
        batch_size: int,
        workers: int,
        precision: str,
        progress: bool,
        desc: str,
    ) -> dict[int, str]:
        if view == 0:
            from timm.data import create_transform

            transform = create_transform(**data_config, is_training=False)
            seeds = None
        else:
            aug = aug or {}
            transform = augment_transform(data_config, **{k: v for k, v in aug.items() if k != "seed"})
            seeds = [zlib.crc32(f"{aug.get('seed')}:{view}:{f.name}".encode()) for f in files]
        prefix, suffix = Prefix(model, self.cut), Suffix(model, self.cut)
        model.eval()
        ds = ImageDataset(paths, transform, data_config["input_size"], seeds)
        failed: dict[int, str] = {}
        bar = progress_bar(len(ds), desc, unit="img", enabled=progress, dynamic_ncols=True)
        try:
            for idx, x, errors in loader(ds, batch_size, workers):
                ok = [j for j, e in enumerate(errors) if not e]
                for j, e in enumerate(errors):
                    if e:
                        failed[int(idx[j])] = e
                        log.warning("skipped %s", e)
                if ok:
                    with torch.inference_mode(), autocast(precision):
                        xb = x[ok].contiguous(memory_format=torch.channels_last)
                        h = prefix(xb)
                        p = suffix(h).float().numpy()
                        h = h.float().contiguous().numpy().astype(np.float16) if self.cut is not None else None
                    for n, j in enumerate(ok):
                        _save_npz(files[int(idx[j])], p[n], None if h is None else h[n])
                bar.update(len(idx))
        finally:
            bar.close()
        return failed


def _save_npz(path: Path, p: np.ndarray, h: np.ndarray | None) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        if h is None:
            np.savez(f, p=p)
        else:
            np.savez(f, p=p, h=h)
    os.replace(tmp, path)
