"""A torch-free stand-in for an index's backbone, for querying with the OpenVINO model cached on disk."""

from __future__ import annotations

from ..backbones import Backbone
from .cache import cached_ir
from .openvino import openvino_available
from .transform import NumpyTransform


class CachedBackbone(Backbone):
    """An index's backbone made from its manifest alone, for the OpenVINO engine when the model converted from
    exactly those weights (same digest) is in the cache: no torch model, numpy preprocessing."""

    def transform(self) -> NumpyTransform:
        t = NumpyTransform.for_config(self.data_config)
        if t is None:
            raise ValueError(f"{self.name}: its preprocessing has no torch-free equivalent")
        return t


def cached_backbone(name: str, arch: str, weights_sha256: str, data_config: dict, dim: int) -> CachedBackbone | None:
    """A :class:`CachedBackbone` when OpenVINO, a cached model for these weights and a numpy transform exist."""
    if NumpyTransform.for_config(data_config) is None or not openvino_available():
        return None
    if cached_ir(weights_sha256, arch, data_config["input_size"]) is None:
        return None
    return CachedBackbone(
        name=name, arch=arch, model=None, data_config=data_config, weights_sha256=weights_sha256, dim=int(dim)
    )
