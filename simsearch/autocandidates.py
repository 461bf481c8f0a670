"""The index families ``--index auto`` chooses from, sized for ``n`` vectors of ``dim`` floats and a memory budget
(pure functions, no FAISS): :func:`fixed_plan` is the single rule of simsearch ≤ 0.x (commit fe4a9e6, kept as the
``fixed`` chooser and as a baseline); :func:`candidates` lists every family that fits, for
:func:`simsearch.autoindex.build` to measure and choose from (the ``measured`` chooser, the default: see docs/scale.md).

Families (factory strings without the ``IDMap2`` prefix; ``m`` sub-quantisers, ``nlist`` ≈ √n inverted lists):

* ``flat``: exact search (``n`` below ``flat_below`` and the floats fit);
* float vectors fit the budget — candidates re-ranked exactly from the stored floats (``RFlat``) or a graph:
  ``ivf-pq-refine`` ``IVF,PQ{d/16},RFlat`` (8-bit codes: the fixed rule's choice), ``ivf-pqfs-refine``
  ``IVF,PQ{d/8}x4fs,RFlat`` (4-bit fast-scan codes: twice the sub-quantisers in the same bytes, scanned with SIMD
  shuffles), ``ivf-pqfs-fine-refine`` ``IVF,PQ{d/4}x4fs,RFlat`` (4-bit codes of 4 dimensions each: d/8 bytes,
  small beside the floats; on a dense collection they rank candidates well enough to re-rank few),
  ``pca-ivf-pqfs-refine`` ``PCAR{d/4},IVF,PQ{d/8}x4fs,RFlat`` (candidates found in a PCA-rotated, reduced space),
  ``hnsw`` ``HNSW32`` (a graph over the floats; up to :data:`HNSW_MAX` vectors: FAISS cannot remove from it, so a
  removal rebuilds the graph — see docs/scale.md);
  With ``vectors_on_disk`` the floats of the re-ranking stage are not counted in the budget (they stay in the
  index file, memory-mapped; only what queries touch is paged in), so these families serve memory-lean budgets
  too (HNSW excepted);
* memory-lean, when they do not fit — PQ codes only, as many bytes as the budget allows: ``ivf-pq`` (8-bit codes),
  ``ivf-pqfs`` (4-bit fast-scan, whose codebooks are 16× smaller, leaving more bytes for codes) and
  ``pca-ivf-pqfs`` (fast-scan codes of a PCA-rotated quarter of the dimensions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config.autoindex import AutoIndexSpec, format_size
from .errors import SimsearchError
from .system import physical_memory

FLAT_BELOW = 100_000  # exact search below this many vectors (AutoIndexSpec.flat_below None)
ID_BYTES = 24  # per vector in an IDMap2 over an IVF: the id map, the IVF's own id and its direct map (8 bytes each)
MIN_TRAIN = 10_000  # enough for 256-centroid PQ sub-quantisers
FALLBACK_BUDGET = 8 * 10**9  # where the physical memory is unknown
HNSW_M = 32
HNSW_MAX = 500_000  # above this a graph build (and the rebuild a removal needs) takes too long on a few cores
OPT_IN = ("hnsw",)  # only when asked for (spec.families): tuned on indexed items a graph overstated new-query
# recall (100k realistic: 0.95 tuned, 0.935 new); held-out tuning fixes that, but a removal rebuilds the graph and
# HNSW has not been re-measured with it, so `auto` keeps to IVF
HNSW_LINK_BYTES = 2 * HNSW_M * 4 * 1.1 + 16  # level-0 links (2M neighbours × 4 B), upper levels, level table


def default_memory_budget() -> int:
    """Half of this machine's physical memory."""
    mem = physical_memory()
    return mem // 2 if mem else FALLBACK_BUDGET


def flat_below(spec: AutoIndexSpec) -> int:
    return FLAT_BELOW if spec.flat_below is None else spec.flat_below  # read at call time (tests lower it)


@dataclass(frozen=True)
class Plan:
    """A chosen index: its factory string (without the IDMap2 prefix), why, and its estimated size."""

    factory: str
    family: str  # flat | ivf-pq-refine | ivf-pqfs[-fine]-refine | pca-ivf-pqfs-refine | hnsw | ivf-pq | ivf-pqfs | ...
    reason: str
    bytes_per_vector: float
    nlist: int | None = None
    train_size: int | None = None

    def for_size(self, n: int) -> str:
        """The same family's factory string for ``n`` vectors (the inverted lists resized), for a trial on a sample."""
        if self.nlist is None:
            return self.factory
        return self.factory.replace(f"IVF{self.nlist},", f"IVF{nlist_for(n)},", 1)


def nlist_for(n: int) -> int:
    """Inverted lists: a power of two near sqrt(n), with at least 64 training points per list."""
    if n < 64 * 16:
        return max(1, n // 64)
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    while nlist > 16 and n < 64 * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def pq_sizes(dim: int) -> list[int]:
    """Numbers of PQ sub-quantisers usable for ``dim`` (``m`` divides the dimension), small to large."""
    return [m for m in (4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256) if dim % m == 0]


def fs_sizes(dim: int) -> list[int]:
    """Numbers of 4-bit fast-scan sub-quantisers for ``dim`` (even, dividing it, at least 2 dimensions each)."""
    return [m for m in range(2, dim // 2 + 1, 2) if dim % m == 0]


def _largest_fast_scan(dim: int, room: float) -> int | None:
    """The most 4-bit fast-scan sub-quantisers for ``dim`` whose codes (m/2 bytes) fit ``room`` bytes a vector."""
    return max((m for m in fs_sizes(dim) if m / 2 <= room), default=None)


def _fast_scan_fixed(dim: int, nlist: int) -> int:
    """Bytes of an IVF fast-scan index that do not grow with n: the centroids and the 4-bit codebooks."""
    return 4 * dim * nlist + 16 * 4 * dim


def resident_floats(dim: int, spec: AutoIndexSpec) -> int:
    """Bytes per vector of the exact floats a re-ranking stage keeps in memory: none when they stay in the index
    file and are read memory-mapped (``vectors_on_disk``; the page cache holds what the queries touch)."""
    return 0 if spec.vectors_on_disk else 4 * dim


def _sizes(n: int, dim: int, spec: AutoIndexSpec) -> tuple[int, int, int]:
    """(budget, nlist, train size) for ``n`` vectors; raises when an inverted file cannot be trained."""
    budget = spec.memory_budget or default_memory_budget()
    nlist = nlist_for(n)
    flat_bpv = 4 * dim + 8
    if nlist < 4 and flat_bpv * n > budget:
        raise SimsearchError(
            f"{n:,} vectors are too few to train a compressed index, and exact search needs "
            f"{format_size(flat_bpv * n)}: raise --memory-budget"
        )
    return budget, nlist, int(min(n, max(MIN_TRAIN, 64 * nlist)))


def _flat(n: int, dim: int, spec: AutoIndexSpec) -> Plan | None:
    budget, nlist, _ = _sizes(n, dim, spec)
    flat_bpv = 4 * dim + 8
    below = flat_below(spec)
    if n < below and flat_bpv * n <= budget:
        return Plan("Flat", "flat", f"{n:,} vectors (< {below:,}): exact search", flat_bpv)
    if nlist < 4:
        return Plan("Flat", "flat", f"too few vectors ({n:,}) for an inverted file: exact search", flat_bpv)
    return None


def fixed_plan(n: int, dim: int, spec: AutoIndexSpec | None = None) -> Plan:
    """The single index the fixed rule (commit fe4a9e6) picks for ``n`` vectors of ``dim`` floats."""
    spec = spec or AutoIndexSpec()
    n = max(int(n), 1)
    flat = _flat(n, dim, spec)
    if flat is not None:
        return flat
    budget, nlist, train = _sizes(n, dim, spec)
    fixed = 4 * dim * nlist + 256 * 4 * dim  # coarse centroids + PQ codebooks
    per_vector = (budget - fixed) / n
    pq = pq_sizes(dim)
    m_fast = next((m for m in pq if dim // m <= 16 and m >= 8), pq[-1] if pq else None)
    floats = resident_floats(dim, spec)
    if m_fast is not None and spec.vectors_on_disk and per_vector < floats + m_fast + ID_BYTES:
        m_fast = max((m for m in pq if m <= per_vector - ID_BYTES and dim // m >= 2), default=None)
    if m_fast is not None and per_vector >= floats + m_fast + ID_BYTES:
        where = "are memory-mapped from the index file" if spec.vectors_on_disk else f"fit in {format_size(budget)}"
        return Plan(
            f"IVF{nlist},PQ{m_fast},RFlat",
            "ivf-pq-refine",
            f"{n:,} vectors; the float vectors {where}: IVF-PQ candidates re-ranked exactly",
            floats + m_fast + ID_BYTES,
            nlist,
            train,
        )
    room = per_vector - ID_BYTES
    lean = [m for m in pq if m <= room and dim // m >= 2]
    if not lean:
        raise SimsearchError(
            f"a memory budget of {format_size(budget)} is too small for {n:,} vectors "
            f"(at least {format_size(n * (8 + ID_BYTES) + fixed)} is needed): raise --memory-budget"
        )
    m = max(lean)
    return Plan(
        f"IVF{nlist},PQ{m}",
        "ivf-pq",
        f"{n:,} vectors must fit in {format_size(budget)} ({per_vector:.0f} B/vector): IVF-PQ with {m}-byte codes",
        m + ID_BYTES,
        nlist,
        train,
    )


def candidates(n: int, dim: int, spec: AutoIndexSpec | None = None) -> list[Plan]:
    """Every family that fits the budget for ``n`` vectors of ``dim`` floats (the fixed rule's choice first), or
    only ``Flat`` when exact search is the answer. ``spec.families`` (when set) keeps only those families."""
    spec = spec or AutoIndexSpec()
    n = max(int(n), 1)
    first = fixed_plan(n, dim, spec)  # raises when nothing fits
    if first.family == "flat":
        return [first]
    budget, nlist, train = _sizes(n, dim, spec)
    out = [first]
    reduced = dim // 4 if dim % 8 == 0 and dim >= 64 else None
    pca_fixed = (
        4 * dim * (dim + reduced) if reduced else 0
    )  # FAISS keeps the full d × d PCA matrix besides the d × d/4 one
    if first.family == "ivf-pq-refine":
        floats = resident_floats(dim, spec) + ID_BYTES
        kept = "stay on disk (memory-mapped)" if spec.vectors_on_disk else "fit"
        m_fs = 2 * int(first.factory.split(",PQ")[1].split(",")[0])  # the same bytes, twice the sub-quantisers
        if spec.vectors_on_disk:  # codes as large as the room allows, up to the fixed rule's default bytes
            room = (budget - _fast_scan_fixed(dim, nlist)) / n - ID_BYTES
            m_fs = _largest_fast_scan(dim, min(room, max(m_fs, 2 * dim // 16) / 2)) or m_fs
        if dim % m_fs == 0:
            out.append(
                Plan(
                    f"IVF{nlist},PQ{m_fs}x4fs,RFlat",
                    "ivf-pqfs-refine",
                    f"{n:,} vectors; the floats {kept}: IVF with 4-bit fast-scan PQ candidates, re-ranked exactly",
                    floats + m_fs / 2,
                    nlist,
                    train,
                )
            )
        m_fine = dim // 4  # 4 dimensions per 4-bit sub-quantiser: d/8 bytes, small beside the floats (d × 4 bytes)
        if not spec.vectors_on_disk and m_fine > m_fs and m_fine % 2 == 0 and dim % m_fine == 0:
            out.append(
                Plan(
                    f"IVF{nlist},PQ{m_fine}x4fs,RFlat",
                    "ivf-pqfs-fine-refine",
                    f"{n:,} vectors; the floats fit: IVF with finer 4-bit fast-scan PQ candidates ({m_fine // 2} "
                    "bytes), re-ranked exactly",
                    floats + m_fine / 2,
                    nlist,
                    train,
                )
            )
        m_r = reduced // 4 if reduced else 0  # 4 dimensions per sub-quantiser
        if m_r and m_r % 2 == 0 and (budget - pca_fixed) / n >= floats + m_r / 2:
            out.append(
                Plan(
                    f"PCAR{reduced},IVF{nlist},PQ{m_r}x4fs,RFlat",
                    "pca-ivf-pqfs-refine",
                    f"{n:,} vectors; the floats {kept}: candidates found in {reduced} PCA dimensions (fast-scan PQ), "
                    "re-ranked exactly",
                    floats + m_r / 2 + pca_fixed / n,
                    nlist,
                    train,
                )
            )
        graph = 4 * dim + HNSW_LINK_BYTES + 8  # a graph walk reads vectors all over the file: never on disk
        if n <= HNSW_MAX and graph * n <= budget and not spec.vectors_on_disk:
            out.append(
                Plan(
                    f"HNSW{HNSW_M}",
                    "hnsw",
                    f"{n:,} vectors; the floats fit: HNSW graph over them (a removal rebuilds the graph)",
                    graph,
                )
            )
    else:
        m = _largest_fast_scan(dim, (budget - _fast_scan_fixed(dim, nlist)) / n - ID_BYTES)
        if m:
            out.append(
                Plan(
                    f"IVF{nlist},PQ{m}x4fs",
                    "ivf-pqfs",
                    f"{n:,} vectors must fit in {format_size(budget)}: IVF with {m // 2}-byte 4-bit fast-scan codes",
                    m / 2 + ID_BYTES,
                    nlist,
                    train,
                )
            )
        if reduced:
            m = _largest_fast_scan(reduced, (budget - pca_fixed - _fast_scan_fixed(reduced, nlist)) / n - ID_BYTES)
            if m:
                out.append(
                    Plan(
                        f"PCAR{reduced},IVF{nlist},PQ{m}x4fs",
                        "pca-ivf-pqfs",
                        f"{n:,} vectors must fit in {format_size(budget)}: {m // 2}-byte fast-scan codes of "
                        f"{reduced} PCA dimensions",
                        m / 2 + ID_BYTES + pca_fixed / n,
                        nlist,
                        train,
                    )
                )
    if spec.families:
        out = [p for p in out if p.family in spec.families] or [first]
    else:
        out = [p for p in out if p.family not in OPT_IN]
    return out
