"""Catalogue benchmark: a shop built from the Caltech-101 photos, filtered-search correctness against brute force,
filtered latency at 100k items, and max vs mean item pooling.

    .venv/bin/python scripts/bench_catalog.py [--caltech ../shared/data/caltech101] [--vectors-from INDEX]

1. Shop: items of 1-4 photos of one class (seeded), attributes category = class, brand (20, random), price
   (5-500, random), in_stock (80 %). Photos are embedded by ``simsearch index --catalog`` unless
   ``--vectors-from`` names a Caltech index already built with the default backbone (its vectors are reused).
2. Correctness: 20 random filters near each selectivity 0.1 %, 1 %, 10 %, 50 %, 100 %; for each, a query item's
   top 10 by the library (``Index.search``) against numpy brute force over all photos with the filter evaluated in
   plain Python. Must be 100 % identical.
3. Latency: 100k synthetic items (Caltech-like vectors, same attributes), p50/p99 of filtered vs unfiltered search.
4. Pooling: item-level leave-one-out R@1 / R@10 / MAP@R (relevant = same category) with max and with mean pooling.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import simsearch  # noqa: E402
from simsearch.compact import compact_index  # noqa: E402
from simsearch.store import DEFAULT_FACTORY, GenerationWriter, Manifest, new_faiss_index, now, writer_lock  # noqa: E402

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5, 1.0)
BRANDS = [f"brand-{i:02d}" for i in range(20)]


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")]
    return " ".join(keep) or "none of avx2/avx512/amx"


def make_shop(caltech: Path, seed: int, limit: int | None) -> list[dict]:
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    import csv

    with open(caltech / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] != "BACKGROUND_Google":
                by_class.setdefault(row["label"], []).append(row["path"])
    items = []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        while paths:
            n = min(len(paths), rng.randint(1, 4))
            photos, paths = paths[:n], paths[n:]
            items.append(
                {
                    "key": f"sku-{len(items):05d}",
                    "images": [str((caltech / p).resolve()) for p in photos],
                    "category": label,
                    "brand": rng.choice(BRANDS),
                    "price": round(rng.uniform(5, 500), 2),
                    "in_stock": rng.random() < 0.8,
                }
            )
    rng.shuffle(items)
    return items[:limit] if limit else items


def build_shop(items, out: Path, pooling: str, vectors_from: Path | None) -> simsearch.Index:
    if out.exists():
        shutil.rmtree(out)
    attrs = lambda it: {k: it[k] for k in ("category", "brand", "price", "in_stock")}  # noqa: E731
    if vectors_from is None:
        cat = out.parent / f"{out.name}.jsonl"
        cat.write_text("".join(json.dumps(it) + "\n" for it in items))
        return simsearch.build_index(catalog=cat, out=out, item_pooling=pooling, progress=True)
    src = simsearch.open_index(vectors_from)
    empty = out.parent / "empty-folder"
    empty.mkdir(exist_ok=True)
    simsearch.build_index([empty], out, item_pooling=pooling, backbone=src.manifest.backbone).close()
    idx = simsearch.open_index(out)
    ids = dict(zip(*_paths(src), strict=True))
    for start in range(0, len(items), 500):
        ops = []
        for it in items[start : start + 500]:
            vecs = src.vectors([ids[p] for p in it["images"]])[1]
            ops.append(idx.prepare_put(it["key"], it["images"], attrs(it), vectors=vecs))
        idx.write(ops)
    idx.close()
    compact_index(out)
    return simsearch.open_index(out)


def _paths(index):
    items = index.items()
    return [str(it.abspath) for it in items], [it.id for it in items]


# ------------------------------------------------------------------------------------------------ filters


def random_filter(rng: random.Random, items: list[dict], target: float):
    """A filter (dict form, text form, python predicate) with selectivity near ``target``."""
    if target >= 1.0:
        return {}, "", lambda it: True
    prices = sorted(it["price"] for it in items)
    kind = rng.choice(["price", "stock_price", "categories", "brand_price"])
    if kind == "price":
        q = prices[max(0, int(target * len(prices)) - 1)]
        return {"price": {"lte": q}}, f"price <= {q}", lambda it: it["price"] <= q
    if kind == "stock_price":
        q = prices[min(len(prices) - 1, int(min(1.0, target / 0.8) * len(prices)))]
        return (
            {"in_stock": True, "price": {"lt": q}},
            f"in_stock and price < {q}",
            lambda it: it["in_stock"] and it["price"] < q,
        )
    if kind == "categories":
        cats = sorted({it["category"] for it in items})
        rng.shuffle(cats)
        chosen, share = [], 0.0
        counts = {c: sum(1 for it in items if it["category"] == c) / len(items) for c in cats}
        for c in cats:
            if share >= target:
                break
            chosen.append(c)
            share += counts[c]
        text = "category in (" + ", ".join(json.dumps(c) for c in chosen) + ")"
        return {"category": {"in": chosen}}, text, lambda it: it["category"] in chosen
    brands = rng.sample(BRANDS, max(1, min(20, round(target * 30))))
    q = prices[min(len(prices) - 1, int(min(1.0, target / (len(brands) / 20)) * len(prices)))]
    text = "brand in (" + ", ".join(json.dumps(b) for b in brands) + f") and price <= {q}"
    return (
        {"brand": {"in": brands}, "price": {"lte": q}},
        text,
        lambda it: it["brand"] in brands and it["price"] <= q,
    )


def brute_force(idx, items_by_key, photo_vecs, photo_item, query_vecs, pred, exclude_key, k):
    scores = (photo_vecs @ query_vecs.T).max(axis=1)
    best: dict[int, float] = {}
    for item, s in zip(photo_item.tolist(), scores.tolist(), strict=True):
        if s > best.get(item, -9):
            best[item] = s
    keys = {i: k for k, i in items_by_key.items()}
    ranked = sorted(((s, keys[i]) for i, s in best.items()), key=lambda t: -t[0])
    return [(key, s) for s, key in ranked if key != exclude_key and pred(key)][:k]


def check_filters(idx, items, rng, n_per=20, k=10) -> list[dict]:
    meta = {it["key"]: it for it in items}
    items_by_key = idx.ids_for_keys(list(meta))
    pids, owners = idx.snapshot.photo_map()
    photo_vecs = np.asarray(idx.faiss.reconstruct_batch(pids), np.float32)
    rows = []
    for target in SELECTIVITIES:
        same = share_sum = 0
        for _ in range(n_per):
            fdict, ftext, pred_item = random_filter(rng, items, target)
            share_sum += sum(1 for it in items if pred_item(it)) / len(items)
            qkey = rng.choice(items)["key"]
            qvecs = idx.item_vectors(items_by_key[qkey])
            form = rng.choice(["dict", "text"])
            hits = idx.search(qkey, k=k, filter=fdict if form == "dict" else ftext)
            keep = {key for key, it in meta.items() if pred_item(it)}
            truth = brute_force(idx, items_by_key, photo_vecs, owners, qvecs, keep.__contains__, qkey, k)
            got = [(h.key, h.score) for h in hits]
            ok = len(got) == len(truth) and all(
                g[0] == t[0] or abs(g[1] - t[1]) < 1e-5 for g, t in zip(got, truth, strict=True)
            )
            same += ok
            if not ok:
                print(f"  MISMATCH at {target}: {ftext!r}\n    got   {got[:5]}\n    truth {truth[:5]}", file=sys.stderr)
        rows.append({"target": target, "selectivity": share_sum / n_per, "filters": n_per, "identical": same})
    return rows


# ------------------------------------------------------------------------------------------------ latency


def synthetic_index(out: Path, n: int, dim: int, seed: int, template: np.ndarray) -> list[dict]:
    """An index of ``n`` single-photo items whose vectors are Caltech-like (a real vector plus noise)."""
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    base = template[rng.integers(0, len(template), n)]
    vecs = base + 0.7 * rng.standard_normal((n, dim)).astype(np.float32) * template.std(axis=0)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    r = random.Random(seed)
    cats = [f"cat-{i:03d}" for i in range(100)]
    items = [
        {
            "key": f"syn-{i:06d}",
            "category": r.choice(cats),
            "brand": r.choice(BRANDS),
            "price": round(r.uniform(5, 500), 2),
            "in_stock": r.random() < 0.8,
        }
        for i in range(n)
    ]
    out.mkdir(parents=True)
    faiss_index, factory = new_faiss_index(dim, DEFAULT_FACTORY)
    stamp = now()
    m = Manifest(
        format_version=2, backbone="synthetic", arch="none", weights_sha256="0" * 64, preprocessing={}, dim=dim,
        metric="inner_product", index_factory=factory, count=0, roots=[str(out)], created=stamp, updated=stamp,
        simsearch_version=simsearch.__version__,
        attributes={"category": "str", "brand": "str", "price": "float", "in_stock": "bool"},
        source={"kind": "catalog"},
    )  # fmt: skip
    with writer_lock(out):
        w = GenerationWriter(out, m, faiss_index, None)
        ids = w.allocate_ids(n)
        w.add_items([(int(i), it["key"], {k: v for k, v in it.items() if k != "key"}) for i, it in zip(ids, items)])
        w.add_photos(ids, vecs, [(int(i), int(i), 0, f"{int(i)}.jpg", 0, 0, None) for i in ids])
        w.commit()
        w.close()
    return items


def latency(idx, items, rng, queries=200, k=10) -> list[dict]:
    qvecs = idx.faiss.reconstruct_batch(idx.snapshot.photo_map()[0][rng.sample(range(len(items)), queries)])
    out = []
    for target in SELECTIVITIES:
        times = []
        filters = [random_filter(rng, items, target)[0] for _ in range(queries)]
        idx.search(qvecs[0], k=k, filter=filters[0] or None)  # warm: attribute table, photo map
        for q, f in zip(qvecs, filters, strict=True):
            t0 = time.perf_counter()
            idx.search(q, k=k, filter=f or None)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out.append({"target": target, "p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * len(times)) - 1]})
    return out


# ------------------------------------------------------------------------------------------------ pooling


def pooling_quality(idx, items) -> dict:
    cat = {it["key"]: it["category"] for it in items}
    r1 = r10 = 0
    maps = []
    for it in items:
        hits = idx.search(it["key"], k=max(10, sum(1 for x in items if x["category"] == it["category"]) - 1))
        rel = [cat[h.key] == it["category"] for h in hits]
        n_rel = sum(1 for x in items if x["category"] == it["category"]) - 1
        if n_rel == 0:
            continue
        r1 += rel[0]
        r10 += any(rel[:10])
        maps.append(_map_at_r(rel, n_rel))
    n = len(maps)
    return {"queries": n, "recall@1": r1 / n, "recall@10": r10 / n, "map@r": float(np.mean(maps))}


def _map_at_r(rel: list[bool], r: int) -> float:
    hits, total = 0, 0.0
    for i, ok in enumerate(rel[:r], 1):
        if ok:
            hits += 1
            total += hits / i
    return total / r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caltech", type=Path, default=REPO.parent / "shared" / "data" / "caltech101")
    ap.add_argument("--vectors-from", type=Path, help="A Caltech index built with the default backbone (reuse).")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench-catalog")
    ap.add_argument("--limit", type=int, help="Use only this many items.")
    ap.add_argument("--synthetic", type=int, default=100_000, help="Items in the latency index.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.caltech / "labels.csv").exists():
        sys.exit(f"no Caltech-101 at {args.caltech}")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU flags: {cpu_flags()}; load average {Path('/proc/loadavg').read_text().split()[:3]}")
    items = make_shop(args.caltech, args.seed, args.limit)
    photos = sum(len(it["images"]) for it in items)
    print(f"shop: {len(items)} items, {photos} photos, {len({it['category'] for it in items})} categories")

    t0 = time.perf_counter()
    idx = build_shop(items, args.work / "shop-max", "max", args.vectors_from)
    print(f"built the max-pooling shop index in {time.perf_counter() - t0:.1f} s")
    rng = random.Random(args.seed)
    print("\n| target selectivity | mean measured | filters | top-10 identical to brute force |")
    print("| ---: | ---: | ---: | ---: |")
    for r in check_filters(idx, items, rng):
        print(f"| {r['target']:.1%} | {r['selectivity']:.2%} | {r['filters']} | {r['identical']}/{r['filters']} |")

    print("\n| pooling | queries | item R@1 | item R@10 | item MAP@R |")
    print("| --- | ---: | ---: | ---: | ---: |")
    mean_idx = build_shop(items, args.work / "shop-mean", "mean", args.vectors_from)
    for name, ix in (("max", idx), ("mean", mean_idx)):
        q = pooling_quality(ix, items)
        print(f"| {name} | {q['queries']} | {q['recall@1']:.4f} | {q['recall@10']:.4f} | {q['map@r']:.4f} |")
    template = idx.vectors()[1]
    idx.close()
    mean_idx.close()

    t0 = time.perf_counter()
    syn = synthetic_index(args.work / "synthetic", args.synthetic, template.shape[1], args.seed, template)
    print(f"\nsynthetic index: {len(syn)} items in {time.perf_counter() - t0:.1f} s")
    with simsearch.open_index(args.work / "synthetic") as six:
        rows = latency(six, syn, random.Random(args.seed))
    base = rows[-1]
    print("| filter selectivity | p50 ms | p99 ms | p50 / unfiltered | p99 / unfiltered |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['target']:.1%} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] / base['p50_ms']:.2f} | {r['p99_ms'] / base['p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
