"""Synthetic unit vectors shaped like real embeddings, for scale benchmarks and tests (numpy only; layer: base).

Two generators, both seeded and both expanding a set of real embeddings ``base`` (unit rows):

* :func:`mixture_vectors` (``mixture``, the first one): a random convex mixture (Dirichlet(1) weights) of ``mix``
  embeddings of one class, re-normalised, plus *isotropic* Gaussian noise of norm ``noise``, re-normalised. The
  isotropic part spreads variance evenly over all dimensions, which real embeddings never do: it flattens the
  PCA spectrum and is incompressible by construction (hard on product quantisation).
* :class:`PcaNoise` (``realistic``): fitted to ``base`` — a real vector plus Gaussian noise along each principal
  direction at ``factor`` × that direction's standard deviation, re-normalised. Its noise has the covariance of
  the real set (scaled), so the PCA spectrum keeps the real shape, and ``factor`` sets how close generated
  vectors are to their neighbours (:data:`REALISTIC_FACTOR` matches the real set's neighbour similarities; see
  docs/scale.md).

:func:`pca_shares` and :func:`neighbour_similarity` are the statistics both are checked against.
THE VECTORS ARE SYNTHETIC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATORS = ("realistic", "mixture")
REALISTIC_FACTOR = (
    0.9  # noise along each PCA direction, × its std: at 100k, top-1/top-10 cosine 0.79/0.60 (real 0.74/0.64)
)
SHARE_AT = (1, 10, 50, 100, 256)  # PCA components whose cumulative variance share is reported


def _normalise(v: np.ndarray) -> np.ndarray:
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def mixture_vectors(
    base: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    seed: int,
    mix: int = 3,
    noise: float = 0.5,
    keep_real: bool = False,
    chunk: int = 50_000,
) -> np.ndarray:
    """``n`` unit vectors: convex mixtures of ``mix`` same-class rows of ``base`` plus isotropic noise (the first
    rows are ``base`` itself with ``keep_real``)."""
    rng = np.random.default_rng(seed)
    classes, inv = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inv == c) for c in range(len(classes))]
    p = np.array([len(m) for m in members], float)
    p /= p.sum()
    d = base.shape[1]
    out = np.empty((n, d), np.float32)
    start = min(n, len(base)) if keep_real else 0
    out[:start] = base[:start]
    for s in range(start, n, chunk):
        m = min(chunk, n - s)
        cls = rng.choice(len(classes), size=m, p=p)
        pick = np.stack([members[c][rng.integers(0, len(members[c]), mix)] for c in cls])
        w = rng.dirichlet(np.ones(mix), size=m).astype(np.float32)
        v = _normalise(np.einsum("nk,nkd->nd", w, base[pick]))
        v += (noise / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        out[s : s + m] = _normalise(v)
    return out


@dataclass(frozen=True)
class PcaNoise:
    """The realistic generator, fitted to ``base``: principal directions (rows of ``components``) and their
    standard deviations. Make one with :meth:`fit`, vectors with :meth:`sample`."""

    base: np.ndarray
    components: np.ndarray  # (r, d), orthonormal rows, by decreasing variance
    stds: np.ndarray  # (r,)
    factor: float = REALISTIC_FACTOR

    @classmethod
    def fit(cls, base: np.ndarray, factor: float = REALISTIC_FACTOR) -> PcaNoise:
        x = np.asarray(base, np.float32)
        centred = (x - x.mean(axis=0)).astype(np.float64)
        var, vecs = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))  # ascending
        order = np.argsort(var)[::-1]
        stds = np.sqrt(np.maximum(var[order], 0)).astype(np.float32)
        return cls(x, np.ascontiguousarray(vecs[:, order].T, np.float32), stds, float(factor))

    def with_factor(self, factor: float) -> PcaNoise:
        return PcaNoise(self.base, self.components, self.stds, float(factor))

    def sample(self, n: int, *, seed: int, keep_real: bool = False, chunk: int = 50_000) -> np.ndarray:
        """``n`` unit vectors: a random row of ``base`` plus N(0, (factor·std_j)²) along each direction j,
        re-normalised (the first rows are ``base`` itself with ``keep_real``)."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.base.shape[1]), np.float32)
        start = min(n, len(self.base)) if keep_real else 0
        out[:start] = self.base[:start]
        scale = (self.factor * self.stds)[None, :]
        for s in range(start, n, chunk):
            m = min(chunk, n - s)
            rows = rng.integers(0, len(self.base), m)
            z = rng.standard_normal((m, len(self.stds)), dtype=np.float32) * scale
            out[s : s + m] = _normalise(self.base[rows] + z @ self.components)
        return out


def pca_shares(x: np.ndarray, at: tuple[int, ...] = SHARE_AT, sample: int = 20_000, seed: int = 0) -> dict[int, float]:
    """Cumulative share of the variance in the top ``k`` principal components, for each ``k`` in ``at`` (on a
    random sample of at most ``sample`` rows)."""
    x = np.asarray(x, np.float32)
    if len(x) > sample:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))]
    centred = (x - x.mean(axis=0)).astype(np.float64)
    var = np.maximum(np.linalg.eigvalsh(centred.T @ centred), 0)[::-1]
    cum = np.cumsum(var) / var.sum()
    return {k: round(float(cum[min(k, len(cum)) - 1]), 4) for k in at}


def neighbour_similarity(
    queries: np.ndarray, xb: np.ndarray, *, k: int = 10, exclude_self: bool = False, chunk: int = 50_000
) -> tuple[float, float]:
    """Median cosine of each query's top-1 and top-``k`` neighbour in ``xb`` (unit rows). ``exclude_self``: the
    queries are the first rows of ``xb`` and each leaves itself out (leave-one-out on a real set)."""
    q = np.asarray(queries, np.float32)
    kk = k
    best = np.full((len(q), kk), -np.inf, np.float32)
    for s in range(0, len(xb), chunk):
        sims = q @ np.asarray(xb[s : s + chunk], np.float32).T
        if exclude_self and s < len(q):
            rows = np.arange(len(q))
            inside = rows[(rows >= s) & (rows < s + sims.shape[1])]
            sims[inside, inside - s] = -np.inf
        both = np.concatenate([best, sims], axis=1)
        best = -np.sort(-np.partition(both, both.shape[1] - kk, axis=1)[:, -kk:], axis=1)
    return float(np.median(best[:, 0])), float(np.median(best[:, k - 1]))
