"""Near-duplicates: pairs decided from two signals, grouped around the most original-looking member.

    groups = find_duplicates(index)                   # largest groups first, default rule
    groups = find_duplicates(index, 0.93, linkage="complete")
    group = duplicates_of(index, item_id)             # the item and its near-duplicates

**The pair rule** (:class:`simsearch.config.DuplicateRule`): two items are near-duplicates when their cosine
similarity is at least ``threshold`` (``--threshold``, a cosine as before), or when their perceptual hashes
(:mod:`simsearch.phash`, luminance DCT, mirror-aware) are at most ``hash_distance`` bits apart and their cosine is
at least ``hash_threshold``. The embedding alone finds mirrored, rotated and cropped copies that hashes miss, but
not grayscale ones (cosine 0.71-0.81 to their original, below the 0.87 of the closest different photos); the
hash finds those and recoloured/brightened copies. Each pair reports why (``"cosine"``, ``"hash"`` or both),
its cosine and its hash distance. The defaults come from ``scripts/bench_duplicates.py`` (figures below).

**Groups** (``linkage``): ``star`` (default) puts every member within the rule of the group's representative
(no chains: a copy of a copy that is too far from the original stays out); ``complete`` requires every pair of
members to be within the rule; ``single`` is connected components (chains allowed, as before). Groups are formed
greedily from the most original-looking item down. Each group reports its weakest link (the lowest-cosine pair
that holds it together).

**The representative** is the most original-looking member: the largest pixel count (copies get cropped and
downscaled), then colour over grayscale, then the oldest modification time (the original was there first), then
the largest file, then the lowest id. Pixel count and colour are read from the files of the grouped items only
(an unreadable file counts as 0 pixels, grayscale).

**Where pairs come from**: FAISS range searches for the cosine (or k-NN with a growing ``k`` for index types
without range search) and a FAISS binary (Hamming) range search over the hashes, in both orientations; there is
no all-pairs loop in Python. Hashes are stored at index time (``Index.phashes``); for an index written before
that, they are computed from the files on the fly (once per call: slower, but old indexes keep working).

Benchmark (``scripts/bench_duplicates.py``: Caltech-101, 400 photos, 200 with two modified copies each, 200
distractors of the same classes): see :data:`BENCHMARK`.
"""

from .groups import (
    COLOUR_CHROMA,
    DuplicateGroup,
    duplicates_of,
    find_duplicates,
    group_links,
    image_facts,
    links_among,
    originality,
)
from .pairs import (
    DEFAULT_THRESHOLD,
    MAX_PAIRS,
    Link,
    describe_rule,
    hash_pairs,
    make_rule,
    neighbours_above,
    pair_hash_distances,
    phashes,
    phashes_stored,
    photo_phashes,
    similar_pairs,
)

__all__ = [
    "COLOUR_CHROMA",
    "DEFAULT_THRESHOLD",
    "MAX_PAIRS",
    "DuplicateGroup",
    "Link",
    "describe_rule",
    "duplicates_of",
    "find_duplicates",
    "group_links",
    "hash_pairs",
    "image_facts",
    "links_among",
    "make_rule",
    "neighbours_above",
    "originality",
    "pair_hash_distances",
    "phashes",
    "phashes_stored",
    "photo_phashes",
    "similar_pairs",
]
