"""Near-duplicates: pairs decided from two signals, grouped around the most original-looking member.

    groups = find_duplicates(index)                   # largest groups first, default rule
    groups = find_duplicates(index, 0.93, linkage="complete")
    group = duplicates_of(index, item_id)             # the item and its near-duplicates

**The pair rule** (:class:`simsearch.config.DuplicateRule`): two items are near-duplicates when their cosine
similarity is at least ``threshold`` (``--threshold``, a cosine as before), or when their perceptual hashes
(:mod:`simsearch.phash`, luminance DCT, mirror-aware) are at most ``hash_distance`` bits apart and their cosine is
at least ``hash_threshold`` (default: cosine >= 0.87, or hash distance <= 9 with cosine >= 0.4). The embedding
alone finds mirrored, rotated and cropped copies that hashes miss, but not grayscale ones (cosine 0.52-0.85 to
their original, below the 0.88-0.92 of the closest different photos); the hash finds those (distance 0-2) and
brightened, re-encoded or resized copies. Each pair reports why (``"cosine"``, ``"hash"`` or both), its cosine
and its hash distance. The defaults come from ``scripts/bench_duplicates.py`` (figures below).

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
no all-pairs loop in Python. Items are compared by their photos (an item pair scores its best photo pair) and
by the hash of their first photo. Hashes are stored at index time (``photos.phash``); for items indexed before
that they are computed from the files on the fly (once per call: slower, but old indexes keep working).

Benchmark (``scripts/bench_duplicates.py --seeds 0 1 2 --sweep``: Caltech-101, 400 photos, 200 with two modified
copies each (JPEG q40, PNG, resize 60 % and back, brightness +25 %, grayscale, text, 85 % crop, 8° rotation,
mirror), 200 distractors of the same classes; pair-level, pairs of Caltech photos that are themselves copies of
one another left out; three seeds):

    rule                                      precision    recall       F1           gray       crop       rotate
    before: cosine 0.90, connected compon.    0.994-1.000  0.765-0.807  0.864-0.893  0.21-0.33  0.56-0.70  0.84-0.88
    default: 0.87, or hash <= 9 at 0.4; star  0.995-1.000  0.967-0.973  0.981-0.986  1.00       0.84-0.86  0.93-0.98
    imagededup DHash, best distance (11-12)   0.959-0.967  0.672-0.693  0.793-0.805  1.00       0.23-0.35  0.28-0.37

Counting the pairs of Caltech photos that are copies of one another as false, the default's precision is
0.978-0.992. The representative was the original in 596 of 599 groups. The hash costs 0.6 ms an image (one
thread, AVX2 EPYC, load 5), imagehash's ``phash`` of an image and its mirror 2.9 ms, for the same quality.
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
