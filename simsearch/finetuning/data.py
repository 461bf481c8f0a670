"""Training data for fine-tuning: read and check labelled images or pairs, and split off a validation set.

Three inputs, one shape. Every image gets a *group*: its class (labels CSV, class folders) or, for pairs, its
connected component under the "similar" relation (similar is taken as transitive). Two images are known similar
when they share a group, and known dissimilar when their groups are different classes or when some pair marked
0 joins their two components; anything else is unknown and never used by the losses.

Everything here is checked before any model is loaded, so bad input fails fast with a clear message. The files
(CSV, class folders) are read by :mod:`.readers`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SimsearchError
from .readers import read_labels, read_pairs

log = logging.getLogger("simsearch")

MIN_GROUP_IMAGES = 2


@dataclass
class TrainingData:
    """Images, their groups, and which are for training or validation."""

    kind: str  # "classes" or "pairs"
    paths: list[Path]
    groups: np.ndarray  # group id per image
    group_names: list[str]
    train: np.ndarray  # indices of training images
    val: np.ndarray  # indices of validation images
    pairs: np.ndarray | None = None  # (n, 3): i, j, similar (training pairs only)
    negative_groups: np.ndarray | None = None  # sorted keys g1 * G + g2 of known-dissimilar groups (pairs)
    source: dict = field(default_factory=dict)

    def is_negative(self, ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
        """Known-dissimilar mask for arrays of group ids."""
        ga, gb = np.asarray(ga, np.int64), np.asarray(gb, np.int64)
        if self.kind == "classes":
            return ga != gb
        g = len(self.group_names)
        negative = self.negative_groups if self.negative_groups is not None else np.zeros(0, np.int64)
        return np.isin(np.minimum(ga, gb) * g + np.maximum(ga, gb), negative)

    def digest(self) -> str:
        """SHA-256 over the training and validation images (path, size, mtime), their groups and the pairs."""
        h = hashlib.sha256(self.kind.encode())
        for part, idx in (("train", self.train), ("val", self.val)):
            h.update(part.encode())
            for i in idx:
                st = self.paths[i].stat()
                h.update(
                    f"{self.paths[i]}\0{st.st_size}\0{st.st_mtime_ns}\0{self.group_names[self.groups[i]]}\n".encode()
                )
        if self.pairs is not None:
            h.update(np.ascontiguousarray(self.pairs, np.int64).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        def n_groups(idx):
            return len(set(self.groups[idx].tolist()))

        out = {
            "kind": self.kind,
            **self.source,
            "images": len(self.train) + len(self.val),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "train_groups": n_groups(self.train),
            "val_groups": n_groups(self.val),
        }
        if self.pairs is not None:
            out["train_pairs"] = len(self.pairs)
            out["train_similar_pairs"] = int(self.pairs[:, 2].sum())
        return out


# ------------------------------------------------------------------------------------------ building


def _components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    _, comp = np.unique(roots, return_inverse=True)
    return comp.astype(np.int64)


def _eval_groups(groups: np.ndarray, idx: np.ndarray) -> int:
    """Groups with at least two images among ``idx`` (what retrieval can be measured on)."""
    counts = Counter(groups[idx].tolist())
    return sum(1 for c in counts.values() if c >= MIN_GROUP_IMAGES)


def _holdout(groups: np.ndarray, candidates: np.ndarray, holdout: str, fraction: float, rng) -> np.ndarray:
    """Validation indices chosen among ``candidates``: whole groups ('classes') or images within groups."""
    counts = Counter(groups[candidates].tolist())
    usable = sorted(g for g, c in counts.items() if c >= MIN_GROUP_IMAGES)
    if holdout == "classes":
        n_val = max(2, round(fraction * len(usable)))
        if len(usable) - n_val < 2:
            raise SimsearchError(
                f"too few classes to hold some out for validation ({len(usable)} with {MIN_GROUP_IMAGES}+ images; "
                "need at least 4): add classes, use holdout='images' (--holdout images), or give a validation set"
            )
        chosen = set(rng.choice(usable, size=n_val, replace=False).tolist())
        return np.array([i for i in candidates if groups[i] in chosen], np.int64)
    if holdout == "images":
        val = []
        by_group: dict[int, list[int]] = {}
        for i in candidates:
            by_group.setdefault(int(groups[i]), []).append(int(i))
        for g in usable:
            members = by_group[g]
            n = len(members)
            k = max(MIN_GROUP_IMAGES, round(fraction * n))
            if n - k >= MIN_GROUP_IMAGES:
                val += rng.choice(members, size=k, replace=False).tolist()
        return np.array(sorted(val), np.int64)
    raise SimsearchError(f"holdout must be 'classes' or 'images', not {holdout!r}")


def build_from_labels(
    paths: list[Path],
    labels: list[str],
    splits: list[str | None],
    *,
    holdout: str = "classes",
    val_fraction: float = 0.15,
    seed: int = 0,
    val_data: tuple[list[Path], list[str]] | None = None,
    source: dict | None = None,
) -> TrainingData:
    paths, labels = list(paths), list(labels)
    explicit_val = any(s == "val" for s in splits)
    if val_data is not None:
        vp, vl = val_data
        known = {p: i for i, p in enumerate(paths)}
        overlap = [p for p in vp if p in known]
        if overlap:
            raise SimsearchError(f"{len(overlap)} validation image(s) are also training images, e.g. {overlap[0]}")
        paths += list(vp)
        labels += list(vl)
        splits = [*["train"] * (len(paths) - len(vp)), *["val"] * len(vp)]
        explicit_val = True
    names = sorted(set(labels))
    if len(names) < 2:
        raise SimsearchError(
            f"a single class ({names[0]!r}): fine-tuning on labels needs at least two classes"
            if names
            else "no classes"
        )
    gid = {n: i for i, n in enumerate(names)}
    groups = np.array([gid[lab] for lab in labels], np.int64)
    rng = np.random.default_rng(seed)
    if explicit_val:
        train = np.array([i for i, s in enumerate(splits) if s != "val"], np.int64)
        val = np.array([i for i, s in enumerate(splits) if s == "val"], np.int64)
        how = "explicit"
    else:
        val = _holdout(groups, np.arange(len(paths)), holdout, val_fraction, rng)
        train = np.setdiff1d(np.arange(len(paths)), val)
        how = holdout
    check_sizes(groups, train, val, names)
    src = {**(source or {}), "validation": how, "classes": len(names)}
    return TrainingData("classes", paths, groups, names, train, val, source=src)


def check_sizes(groups: np.ndarray, train: np.ndarray, val: np.ndarray, names: list[str]) -> None:
    """Refuse training data too small to train or to validate on (also after unreadable images are dropped)."""
    train_counts = Counter(groups[train].tolist())
    if len(train_counts) < 2:
        raise SimsearchError("fine-tuning needs training images in at least two classes")
    if _eval_groups(groups, train) < 1 or len(train) < 4:
        raise SimsearchError(
            f"too few training images ({len(train)}): need at least 4, with {MIN_GROUP_IMAGES}+ in some class"
        )
    if _eval_groups(groups, val) < 2:
        raise SimsearchError(
            f"too few validation images ({len(val)}): validation needs at least two classes with "
            f"{MIN_GROUP_IMAGES}+ images each; add images, or give a validation set (split=val rows or --val)"
        )


def build_from_pairs(
    pairs: list[tuple[Path, Path, int]],
    splits: list[str | None],
    *,
    holdout: str = "classes",
    val_fraction: float = 0.15,
    seed: int = 0,
    val_data: tuple[list[Path], list[str]] | None = None,
    source: dict | None = None,
) -> TrainingData:
    """Groups are the components of the similar-pairs graph; validation holds out components or images."""
    index: dict[Path, int] = {}
    for a, b, _ in pairs:
        index.setdefault(a, len(index))
        index.setdefault(b, len(index))
    paths = list(index)
    edges = [(index[a], index[b]) for (a, b, y) in pairs if y]
    groups = _components(len(paths), edges)
    ia = np.array([index[a] for a, _, _ in pairs], np.int64)
    ib = np.array([index[b] for _, b, _ in pairs], np.int64)
    y = np.array([y for _, _, y in pairs], np.int64)
    contradictions = int(((groups[ia] == groups[ib]) & (y == 0)).sum())
    if contradictions:
        log.warning(
            "%d dissimilar pair(s) join images that are similar through other pairs; they are ignored", contradictions
        )
    ok = ~((groups[ia] == groups[ib]) & (y == 0))
    ia, ib, y = ia[ok], ib[ok], y[ok]
    split_arr = np.array([s or "" for s, k in zip(splits, ok) if k])
    rng = np.random.default_rng(seed)
    names = [f"group{g}" for g in range(int(groups.max()) + 1)]
    val_paths: list[Path] = []
    if val_data is not None:
        val_paths = [p for p in val_data[0]]
        overlap = [p for p in val_paths if p in index]
        if overlap:
            raise SimsearchError(f"{len(overlap)} validation image(s) also appear in training pairs, e.g. {overlap[0]}")
        vnames = sorted(set(val_data[1]))
        offset = len(names)
        names += [f"val:{n}" for n in vnames]
        paths += val_paths
        groups = np.concatenate([groups, np.array([offset + vnames.index(lab) for lab in val_data[1]], np.int64)])
        val = np.arange(len(index), len(paths), dtype=np.int64)
        how = "explicit"
    elif (split_arr == "val").any():
        in_val = np.zeros(len(paths), bool)
        sel = split_arr == "val"
        in_val[ia[sel]] = True
        in_val[ib[sel]] = True
        val = np.flatnonzero(in_val)
        how = "explicit"
    else:
        val = _holdout(groups, np.arange(len(paths)), holdout, val_fraction, rng)
        how = holdout
    val_set = np.zeros(len(paths), bool)
    val_set[val] = True
    keep = ~val_set[ia] & ~val_set[ib]
    dropped = int((~keep & ~(val_set[ia] & val_set[ib])).sum())
    if dropped:
        log.info("%d pair(s) between training and validation images are not used", dropped)
    ia, ib, y = ia[keep], ib[keep], y[keep]
    if not y.any():
        raise SimsearchError("no similar pairs are left for training after holding out validation images")
    train = np.unique(np.concatenate([ia, ib]))
    # Validation images are grouped by their own similar pairs only (as if seen for the first time).
    g = len(names)
    neg = ia[y == 0], ib[y == 0]
    ga, gb = groups[neg[0]], groups[neg[1]]
    keys = np.unique(np.minimum(ga, gb) * g + np.maximum(ga, gb))
    if _eval_groups(groups, val) < 2:
        raise SimsearchError(
            f"too few validation images ({len(val)}): validation needs at least two groups of similar images; "
            "add pairs, or give a validation set (split=val rows or --val)"
        )
    if len(set(groups[train].tolist())) < 2 or len(train) < 4:
        raise SimsearchError(f"too few training images ({len(train)}) in the pairs: need at least 4")
    src = {
        **(source or {}),
        "validation": how,
        "pairs": len(pairs),
        "similar_components": len(set(groups[train].tolist())),
    }
    return TrainingData(
        "pairs", paths, groups, names, train, val, pairs=np.stack([ia, ib, y], 1), negative_groups=keys, source=src
    )


def load_training_data(
    data=None,
    *,
    pairs=None,
    labels=None,
    root=None,
    val=None,
    holdout: str = "classes",
    val_fraction: float = 0.15,
    exclude_labels=(),
    classes: str = "all",
    seed: int = 0,
) -> TrainingData:
    """Read and check the training data given to :func:`simsearch.finetune` (exactly one source)."""
    given = [x for x in (data, pairs, labels) if x is not None]
    if len(given) != 1:
        raise SimsearchError("give exactly one source of training data: a class folder, --labels CSV or --pairs CSV")
    if not 0 < val_fraction < 1:
        raise SimsearchError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    val_data = None
    if val is not None:
        vp = Path(val)
        vpaths, vlabels, _ = read_labels(vp, None, None) if vp.is_file() else read_labels(None, vp)
        val_data = (vpaths, vlabels)
    if pairs is not None:
        if classes != "all" or exclude_labels:
            raise SimsearchError("classes/exclude_labels apply to labelled data, not to pairs")
        rows, splits = read_pairs(pairs, root)
        return build_from_pairs(
            rows, splits, holdout=holdout, val_fraction=val_fraction, seed=seed, val_data=val_data,
            source={"pairs_csv": str(Path(pairs).resolve())},
        )  # fmt: skip
    if labels is not None:
        paths, labs, splits = read_labels(labels, None, root, exclude_labels=exclude_labels, classes=classes)
        source: dict[str, Any] = {"labels_csv": str(Path(labels).resolve())}
    else:
        if root is not None:
            raise SimsearchError("root applies to CSV inputs; give the class folder itself")
        paths, labs, splits = read_labels(None, data, exclude_labels=exclude_labels, classes=classes)
        source = {"folder": str(Path(data).resolve())}
    if classes != "all":
        source["classes_subset"] = classes
    if exclude_labels:
        source["excluded_labels"] = sorted(exclude_labels)
    return build_from_labels(
        paths, labs, splits, holdout=holdout, val_fraction=val_fraction, seed=seed, val_data=val_data, source=source
    )


def make_pairs(
    labels: list[str],
    features: np.ndarray | None = None,
    *,
    positives: int = 2,
    negatives: int = 2,
    seed: int = 0,
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, similar)`` from labels: per image, ``positives`` random same-class partners and
    ``negatives`` other-class partners, the hardest ones (most similar ``features``, unit rows) when given.
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    by_label: dict[str, np.ndarray] = {lab: np.flatnonzero(labels_arr == lab) for lab in set(labels)}
    out: set[tuple[int, int, int]] = set()
    for i, lab in enumerate(labels):
        same = by_label[lab][by_label[lab] != i]
        for j in rng.choice(same, size=min(positives, len(same)), replace=False) if len(same) else []:
            out.add((min(i, int(j)), max(i, int(j)), 1))
        if features is not None:
            sims = features @ features[i]
            sims[labels_arr == lab] = -np.inf
            cand = np.argsort(-sims)[: 4 * negatives]
            picks = rng.choice(cand, size=min(negatives, len(cand)), replace=False)
        else:
            other = np.flatnonzero(labels_arr != lab)
            picks = rng.choice(other, size=min(negatives, len(other)), replace=False)
        for j in picks:
            out.add((min(i, int(j)), max(i, int(j)), 0))
    return sorted(out)
