"""Preprocessing: an image source → the array an engine takes.

:class:`Preprocessor` is the one place that decodes an image for embedding (pixel limit, optional draft JPEG
decoding, aspect clipping, then the backbone's eval transform); the local Embedder's decoder threads and the Ray
engine's decoder actors both run it, so every engine sees identical inputs. :class:`NumpyTransform` reproduces
timm's eval transform with PIL and numpy only, so that the OpenVINO engine's processes never import torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..backbones import Backbone
from ..images import DEFAULT_MAX_PIXELS, clip_aspect, draft_size_for, load_image

ImageSource = str | Path | bytes | Image.Image  # what load_image decodes

_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class NumpyTransform:
    """timm's eval transform (resize short side, centre crop, to tensor, normalise) with PIL and numpy only.

    Gives the same arrays as ``timm.data.create_transform(**data_config)`` (same Pillow resize and crop
    arithmetic as torchvision, same float32 operations), without importing torch: the OpenVINO engine uses it,
    so that a query process can start in well under a second. :meth:`for_config` returns None for the
    configurations it does not reproduce (then the timm transform is used).
    """

    def __init__(self, data_config: dict):
        _, self.height, self.width = (int(v) for v in data_config["input_size"])
        crop_pct = data_config.get("crop_pct") or 0.875
        self.scale = math.floor(self.height / crop_pct)
        self.squash = data_config.get("crop_mode") == "squash"
        self.filter = _PIL_FILTERS[data_config.get("interpolation") or "bilinear"]
        self.mean = np.asarray(data_config["mean"], np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(data_config["std"], np.float32).reshape(-1, 1, 1)

    @classmethod
    def for_config(cls, data_config: dict) -> NumpyTransform | None:
        try:
            _, h, w = (int(v) for v in data_config["input_size"])
            supported = (
                h == w
                and data_config.get("crop_mode", "center") in ("center", "squash", None)
                and (data_config.get("interpolation") or "bilinear") in _PIL_FILTERS
                and not data_config.get("crop_border_pixels")
                and len(data_config["mean"]) == len(data_config["std"]) == 3
            )
        except (KeyError, TypeError, ValueError):
            return None
        return cls(data_config) if supported else None

    def __call__(self, img: Image.Image) -> np.ndarray:
        w, h = img.size
        if self.squash:
            size = (self.scale, self.scale)
        elif w <= h:  # torchvision: short side to `scale`, long side truncated
            size = (self.scale, int(self.scale * h / w))
        else:
            size = (int(self.scale * w / h), self.scale)
        if size != (w, h):
            img = img.resize(size, self.filter)
        w, h = img.size
        cw, ch = self.width, self.height
        if cw > w or ch > h:  # torchvision pads with black, then crops
            padded = Image.new(img.mode, (max(w, cw), max(h, ch)), 0)
            padded.paste(img, ((cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0))
            img, (w, h) = padded, padded.size
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
        x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        x -= self.mean
        x /= self.std
        return x


class Preprocessor:
    """Decode one image (path, bytes or PIL image) and apply the backbone's eval transform.

    ``numpy`` uses the torch-free :class:`NumpyTransform` where it reproduces the backbone's transform (else the
    timm transform, a torch tensor). ``draft`` lets large JPEGs decode at a reduced scale, still at least twice the
    size the transform resizes to (:func:`simsearch.images.draft_size_for`). Picklable (sent to Ray actors).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        numpy: bool = False,
        draft: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.data_config = dict(backbone.data_config)
        fast = NumpyTransform.for_config(self.data_config) if numpy else None
        self.transform: Any = fast or backbone.transform()
        self.draft = bool(draft)
        self.draft_size = draft_size_for(self.data_config) if draft else None
        self.max_pixels = max_pixels
        self.clip = self.data_config.get("crop_mode", "center") == "center"
        self.input_size = int(self.data_config["input_size"][-1])

    def __call__(self, source: ImageSource) -> Any:
        return self.apply(self.decode(source))

    def decode(self, source: ImageSource) -> Any:
        """The decoded (upright RGB) PIL image, as this preprocessing decodes it."""
        return load_image(source, max_pixels=self.max_pixels, draft_size=self.draft_size)

    def apply(self, img: Any) -> Any:
        """The backbone's eval transform of a decoded image."""
        if self.clip:
            img = clip_aspect(img)  # a 100000x2 image would otherwise be resized to gigabytes
        return self.transform(img)
