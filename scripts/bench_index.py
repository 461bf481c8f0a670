#!/usr/bin/env python
"""Embedding benchmark (issue 4): speed of every engine end to end on real photos, fidelity, query latency.

Usage, from the repository root::

    .venv/bin/python scripts/bench_index.py                 # ~1000 Caltech-101 images, prints one table
    .venv/bin/python scripts/bench_index.py --limit 2000    # more images
    .venv/bin/python scripts/bench_index.py --json          # the same figures as one JSON document
    .venv/bin/python scripts/bench_index.py --full          # + Recall@1/MAP@R and peak RSS on all of Caltech (slow)
    .venv/bin/python scripts/bench_index.py --images DIR    # any folder of class sub-folders
    .venv/bin/python scripts/bench_index.py --int8-only     # only OpenVINO fp32 vs int8 (engine, model, index)

Images are read in place from ``../shared/data/caltech101/images`` (relative to the repository root), or from
the bundled ``simsearch/sample`` when that is absent. Whole class folders are picked (spread over the classes)
until ``--limit`` images are reached, so that the ``index`` row can index exactly the same files.

Rows (all with the default backbone, all on the same images, in this one process):

* ``baseline``: the textbook pipeline: sequential PIL open + ``convert('RGB')`` + timm eval transform, torch fp32
  NCHW, batch 32. Its vectors are the fp32 reference for the cosine columns.
* ``torch-fp32`` / ``torch-bf16``: simsearch's pipeline (parallel decoding with draft JPEG decoding, bounded
  prefetch) with the torch engine (``channels_last``, bf16 autocast). bf16 rows run only where the CPU has
  native bf16 (AVX-512 BF16/AMX): emulated bf16 is many times slower than fp32.
* ``openvino-fp32`` / ``openvino-bf16``: the same pipeline with the OpenVINO engine (async infer requests).
* ``openvino-int8``: the backbone quantised by NNCF on ~300 of these photos (start-up includes quantising when the
  model is not cached yet); its ``cos`` columns are against the fp32 reference like every row's.
* ``index (default)``: ``build_index`` into a fresh index with default settings (what ``simsearch index`` does,
  including FAISS/SQLite writes), model already loaded.
* ``index (fp32)`` / ``index (int8)``: ``build_index`` with ``precision="int8"`` once (quantising on the index's
  own sample unless cached), then fp32 and int8 alternately ``--rounds`` times into fresh indexes, best of each
  (the load of a shared machine drifts): the ratio is printed. Both indexes' leave-one-out Recall@1 / MAP@R on
  these photos (BACKGROUND_Google excluded), and the cosine of int8 to fp32 vectors. With ``--full`` the
  all-images runs include ``--precision int8`` too.

Also reported: each engine on pre-decoded tensors (model-only limit, no I/O), engine start-up time (the first
run includes the one-off OpenVINO conversion, later ones read the on-disk cache), draft decoding on large
JPEGs (photos upscaled 4x with added detail, in memory: decode+preprocess ms/image, cosine draft vs full),
``simsearch query`` wall time for one new image in a fresh process, ``Index.search`` p50/p90 for new images
on an open index, and peak RSS. The machine may be shared and noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CALTECH = REPO.parent / "shared" / "data" / "caltech101" / "images"
SAMPLE = REPO / "simsearch" / "sample"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick_classes(root: Path, limit: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(chosen class folders, their images in scan order, images of the other classes) — classes in a fixed
    shuffled order until ``limit`` images are reached."""
    from simsearch.images import scan

    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    random.Random(0).shuffle(classes)
    chosen, files = [], []
    for c in classes:
        if len(files) >= limit:
            break
        chosen.append(c)
        files += [f.path for f in scan([c])]
    rest = [f.path for c in classes if c not in chosen for f in scan([c])]
    return chosen, files, rest


def cosine_stats(a: np.ndarray, ref: np.ndarray) -> dict:
    cos = np.sum(a * ref, axis=1)
    return {"cos_median": round(float(np.median(cos)), 5), "cos_min": round(float(cos.min()), 5)}


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


# --------------------------------------------------------------------------------------------- rows


def run_baseline(bb, files: list[Path], batch: int = 32) -> tuple[np.ndarray, float]:
    """Textbook: PIL open + convert('RGB') + timm transform one by one, fp32 NCHW torch model, batch 32."""
    import torch
    from PIL import Image

    from simsearch.backbones import l2_normalize

    model = copy.deepcopy(bb.model).to(memory_format=torch.contiguous_format).eval()
    transform = bb.transform()
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        xs = []
        for f in files[i : i + batch]:
            with Image.open(f) as im:
                xs.append(transform(im.convert("RGB")))
        with torch.inference_mode():
            out.append(l2_normalize(model(torch.stack(xs)).numpy()))
    return np.concatenate(out), time.perf_counter() - t0


def run_pipeline(bb, engine, files: list[Path], draft: bool = True) -> tuple[np.ndarray, float]:
    from simsearch.embed import Embedder

    emb = Embedder(bb, engine=engine, draft=draft)
    t0 = time.perf_counter()
    vecs = [b.vectors for b in emb.embed_files(files)]
    return np.concatenate(vecs), time.perf_counter() - t0


def model_only(engine, tensors, batch: int) -> float:
    """Images/s of ``engine`` on pre-decoded tensors (one warm-up batch first)."""
    import torch

    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    engine(batches[0])
    t0 = time.perf_counter()
    if hasattr(engine, "stream"):
        for _ in engine.stream(enumerate(batches)):
            pass
    else:
        with torch.inference_mode():
            for b in batches:
                engine(b)
    return len(tensors) / (time.perf_counter() - t0)


class NCHWEngine:
    """The baseline's model as an engine (fp32, NCHW) for the model-only figure."""

    name, precision = "torch-nchw", "fp32"

    def __init__(self, bb):
        import torch

        self.model = copy.deepcopy(bb.model).to(memory_format=torch.contiguous_format).eval()

    def __call__(self, x):
        import torch

        from simsearch.backbones import l2_normalize

        with torch.inference_mode():
            return l2_normalize(self.model(x).numpy())


def big_textured_jpeg(path: Path, short_side: int = 2000) -> bytes:
    """A phone-photo-sized JPEG with fine detail, made in memory from a photo (upscaled, sharpened, noise): the
    hard case for reduced-size decoding, since JPEG's DCT scaling filters differently from the model's resize."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(len(str(path)))
    with Image.open(path) as im:
        scale = short_side / min(im.size)
        big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    big = big.filter(ImageFilter.UnsharpMask(4, 150, 2))
    a = np.asarray(big).astype(np.int16) + rng.normal(0, 8, (big.height, big.width, 1)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def draft_check(bb, files: list[Path], n: int = 32) -> dict:
    """Large JPEGs (see :func:`big_textured_jpeg`): decode+preprocess time and fp32 vectors, full vs draft."""
    from PIL import Image

    from simsearch.embed import Embedder
    from simsearch.engines import TorchEngine

    blobs = [big_textured_jpeg(f) for f in files[:: max(1, len(files) // n)][:n]]
    engine = TorchEngine(bb, "fp32")
    out = {}
    for name, draft in (("full", False), ("draft", True)):
        emb = Embedder(bb, engine=engine, draft=draft, workers=1)
        t0 = time.perf_counter()
        xs = [emb.preprocess(b) for b in blobs]
        out[f"{name}_ms_per_image"] = round(1000 * (time.perf_counter() - t0) / len(blobs), 2)
        out[name] = np.vstack(
            [emb.engine(np.stack([x.numpy() for x in xs[i : i + 16]])) for i in range(0, len(xs), 16)]
        )
    sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
    return {
        "images": len(blobs),
        "median_size": f"{int(np.median([s[0] for s in sizes]))}x{int(np.median([s[1] for s in sizes]))}",
        "full_ms_per_image": out["full_ms_per_image"],
        "draft_ms_per_image": out["draft_ms_per_image"],
        **cosine_stats(out["draft"], out["full"]),
    }


def query_latency(index_dir: Path, new_images: list[Path], runs: int = 3) -> dict:
    import simsearch

    # what the `simsearch` console script runs, plus a report of the process's own peak RSS
    cmd = [sys.executable, "-c", _CLI_WITH_RSS]
    walls, rss = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "query", str(index_dir), str(new_images[i % len(new_images)]), "-k", "10", "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        walls.append(time.perf_counter() - t0)
        rss += [float(line.split()[1]) / 1024 for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    cli_rss = round(max(rss), 1) if rss else None  # nan where there is no /proc
    idx = simsearch.open_index(index_dir)
    t0 = time.perf_counter()
    idx.search(new_images[0], k=10)
    first = time.perf_counter() - t0
    lat = []
    for img in new_images[1:]:
        t0 = time.perf_counter()
        idx.search(img, k=10)
        lat.append(time.perf_counter() - t0)
    idx.close()
    return {
        "cli_query_s_median": round(statistics.median(walls), 3),
        "cli_query_s_min": round(min(walls), 3),
        "cli_peak_rss_mb": cli_rss,
        "library_first_search_s": round(first, 3),
        "library_search_ms_p50": round(1000 * float(np.percentile(lat, 50)), 1),
        "library_search_ms_p90": round(1000 * float(np.percentile(lat, 90)), 1),
        "library_searches": len(lat),
    }


# (VmHWM, not ru_maxrss: the latter survives exec and would count the forked benchmark process)
_CLI_WITH_RSS = """
import sys
from simsearch.cli import main
sys.argv[0] = "simsearch"
try:
    main()
finally:
    hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print("PEAK_RSS_KB", hwm[0] if hwm else "nan", file=sys.stderr)
"""


def full_caltech(images: Path, work: Path) -> dict:
    """All images, in fresh processes: `simsearch index` with defaults vs the fp32 torch reference, then
    leave-one-out Recall@1 / MAP@R of both and the cosine between their vectors."""
    import simsearch
    from simsearch.evaluate import evaluate_index

    cmd = [sys.executable, "-c", _CLI_WITH_RSS]
    res: dict = {}
    configs = [
        ("default", []),
        ("reference", ["--engine", "torch", "--precision", "fp32", "--no-draft"]),
        ("int8", ["--precision", "int8"]),
    ]
    for name, extra in configs:
        out = work / f"full-{name}"
        log(f"full Caltech: indexing with {name} settings...")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "index", str(images), "--out", str(out), "--quiet", "--json", *extra],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        report = json.loads(proc.stdout)
        with simsearch.open_index(out) as idx:
            labels = {it.label for it in idx.items()}
            metrics = evaluate_index(idx, exclude_labels=[lab for lab in ("BACKGROUND_Google",) if lab in labels])
            ids, vecs = idx.vectors()
            paths = [str(it.abspath) for it in idx.items(ids)]
        res[name] = {
            "images": report["count"],
            "seconds": round(wall, 1),
            "img_per_s": round(report["embedded"] / report["seconds"], 1) if report["seconds"] else None,
            "peak_rss_mb": max(
                (round(float(x.split()[1]) / 1024, 1) for x in proc.stderr.splitlines() if x.startswith("PEAK_RSS_KB")),
                default=None,
            ),
            "recall@1": metrics["recall@1"],
            "map@r": metrics["map@r"],
            "settings": json.loads((out / "manifest.json").read_text())["extra"].get("embedding"),
            "_vectors": dict(zip(paths, vecs, strict=True)),
        }
    common = sorted(set(res["default"]["_vectors"]) & set(res["reference"]["_vectors"]))
    va, vb = res["default"].pop("_vectors"), res["reference"].pop("_vectors")
    a = np.vstack([va[p] for p in common])
    b = np.vstack([vb[p] for p in common])
    res["cosine_default_vs_reference"] = cosine_stats(a, b)
    res["delta_recall@1"] = round(res["default"]["recall@1"] - res["reference"]["recall@1"], 4)
    res["delta_map@r"] = round(res["default"]["map@r"] - res["reference"]["map@r"], 4)
    vi = res["int8"].pop("_vectors")
    common = sorted(set(va) & set(vi))
    res["cosine_int8_vs_default"] = cosine_stats(np.vstack([vi[p] for p in common]), np.vstack([va[p] for p in common]))
    res["int8_delta_recall@1"] = round(res["int8"]["recall@1"] - res["default"]["recall@1"], 4)
    res["int8_delta_map@r"] = round(res["int8"]["map@r"] - res["default"]["map@r"], 4)
    return res


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="folder of class sub-folders [default: Caltech-101, else sample]")
    ap.add_argument("--limit", type=int, default=1000, help="images to embed per row [default: 1000]")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    ap.add_argument("--full", action="store_true", help="also Recall@1/MAP@R + peak RSS on all images (slow)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating fp32/int8 index runs [default: 2]")
    ap.add_argument(
        "--int8-only",
        action="store_true",
        help="only OpenVINO fp32 vs int8: pipeline, model only, index end to end, retrieval (no torch rows, draft "
        "check or query latency)",
    )
    args = ap.parse_args()

    import torch

    import simsearch
    from simsearch.engines import (
        OpenVINOEngine,
        TorchEngine,
        cache_dir,
        cpu_count,
        cpu_flags,
        cpu_has_bf16,
        openvino_available,
        openvino_has_bf16,
        resolve_engine,
        resolve_precision,
    )
    from simsearch.engines.int8 import calibration_set, nncf_available

    images = args.images or (CALTECH if CALTECH.is_dir() else SAMPLE)
    classes, files, others = pick_classes(images, args.limit)
    log(f"{len(files)} images from {len(classes)} classes of {images}; {cpu_count()} CPUs")
    bb = simsearch.create_backbone()
    auto_engine = resolve_engine("auto")
    result: dict = {
        "images": str(images),
        "n_images": len(files),
        "classes": len(classes),
        "backbone": bb.name,
        "cpus": cpu_count(),
        "cpu_bf16": cpu_has_bf16(),
        "openvino": openvino_available(),
        "openvino_bf16": openvino_has_bf16(),
        "cpu_flags": " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "vnni", "avx512")))),
        "default": {"engine": auto_engine, "precision": resolve_precision(auto_engine, "auto"), "draft": True},
        "openvino_cache": str(cache_dir() / "openvino"),
        "load_avg_start": round(os.getloadavg()[0], 2),
        "rows": [],
        "model_only": [],
    }

    # the reference: textbook pipeline (with --int8-only: the openvino-fp32 row)
    ref, base_rate = None, None
    if not args.int8_only:
        log("baseline (textbook, fp32 NCHW)...")
        ref, secs = run_baseline(bb, files)
        base_rate = len(files) / secs
        result["rows"].append(
            {"row": "baseline", "img_per_s": round(base_rate, 1), "speedup": 1.0, "cos_median": 1.0, "cos_min": 1.0}
        )

    # engines: (row name, factory or None with the reason it is skipped)
    have_ov = openvino_available()
    variants = [
        ("torch-fp32", lambda: TorchEngine(bb, "fp32"), None),
        ("torch-bf16", lambda: TorchEngine(bb, "bf16"), None if cpu_has_bf16() else "no native bf16 on this CPU"),
        ("openvino-fp32", lambda: OpenVINOEngine(bb, "fp32"), None if have_ov else "openvino not installed"),
        (
            "openvino-bf16",
            lambda: OpenVINOEngine(bb, "bf16"),
            None if have_ov and openvino_has_bf16() else "no native bf16 on this CPU (OpenVINO would run fp32)",
        ),
        (
            "openvino-int8",
            lambda: OpenVINOEngine(bb, "int8", calibration=calibration_set(files)),
            None if have_ov and nncf_available() else "needs openvino and nncf (pip install 'simsearch[int8]')",
        ),
    ]
    if args.int8_only:
        variants = [v for v in variants if v[0] in ("openvino-fp32", "openvino-int8")]
    engines = {}
    for name, make, skip in variants:
        if skip:
            result["rows"].append({"row": name, "skipped": skip})
            continue
        log(f"{name}...")
        t0 = time.perf_counter()
        engine = make()
        startup = time.perf_counter() - t0
        engines[name] = engine
        vecs, secs = run_pipeline(bb, engine, files)
        rate = len(files) / secs
        if ref is None or base_rate is None:  # --int8-only: openvino-fp32 is the reference
            ref, base_rate = vecs, rate
        result["rows"].append(
            {
                "row": name,
                "img_per_s": round(rate, 1),
                "speedup": round(rate / base_rate, 2),
                **cosine_stats(vecs, ref),
                "startup_s": round(startup, 2),
                "batch": engine.batch_size,
            }
        )

    # simsearch index end to end (fresh index, default settings)
    work = Path(tempfile.mkdtemp(prefix="simsearch-bench-"))
    try:
        log("index (default settings)...")
        from simsearch.index import build_index

        report = build_index(classes, work / "index", backbone=bb)
        rate = report.embedded / report.seconds
        with simsearch.open_index(work / "index") as idx:
            ids, vecs = idx.vectors()
            by_path = dict(zip([str(it.abspath) for it in idx.items(ids)], vecs, strict=True))
        ivecs = np.vstack([by_path[str(f)] for f in files])
        settings = getattr(report, "embedding", {}) or {}
        result["rows"].append(
            {
                "row": "index (default)",
                "img_per_s": round(rate, 1),
                "speedup": round(rate / base_rate, 2),
                **cosine_stats(ivecs, ref),
                "settings": f"{settings.get('engine')} {settings.get('precision')} draft={settings.get('draft')}",
            }
        )
        result["index_img_per_s"] = round(rate, 1)
        if "openvino-int8" in engines:
            result["int8"] = int8_index_rows(bb, classes, files, work, result, ref, base_rate, args.rounds)

        # model-only limit: pre-decoded tensors
        log("model-only...")
        transform = bb.transform()
        from PIL import Image

        sub = files[: min(len(files), 128)]
        tensors = torch.stack([transform(Image.open(f).convert("RGB")) for f in sub])
        mo = [("baseline (torch fp32 NCHW)", NCHWEngine(bb), 32)]
        mo += [(name, eng, eng.batch_size) for name, eng in engines.items()]
        for name, eng, batch in mo:
            result["model_only"].append({"engine": name, "img_per_s": round(model_only(eng, tensors, batch), 1)})
        best = max(r["img_per_s"] for r in result["model_only"])
        result["index_vs_best_model_only"] = round(result["index_img_per_s"] / best, 2)

        if not args.int8_only:
            draft_and_query(bb, files, others, work, result)

        if args.full:
            result["full"] = full_caltech(images, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_avg_end"] = round(os.getloadavg()[0], 2)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def draft_and_query(bb, files, others, work: Path, result: dict) -> None:
    """Draft decoding on large JPEGs, and query latency on the default index."""
    from PIL import Image

    log("draft decoding on large JPEGs...")
    result["draft"] = draft_check(bb, files)

    log("query latency...")
    new = others[:: max(1, len(others) // 31)][:31] if len(others) >= 4 else []
    if len(new) < 4:  # no other classes (e.g. the sample): mirrored copies are new images
        new = []
        for i, f in enumerate(files[:31]):
            p = work / "new" / f"{i}.jpg"
            p.parent.mkdir(exist_ok=True)
            Image.open(f).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(p, quality=92)
            new.append(p)
    result["query"] = query_latency(work / "index", new)


def index_vectors(path: Path, files: list[Path]) -> np.ndarray:
    """The vectors an index holds for ``files``, in that order."""
    import simsearch

    with simsearch.open_index(path) as idx:
        ids, vecs = idx.vectors()
        by_path = dict(zip([str(it.abspath) for it in idx.items(ids)], vecs, strict=True))
    return np.vstack([by_path[str(f)] for f in files])


def int8_index_rows(bb, classes, files, work: Path, result: dict, ref, base_rate, rounds: int) -> dict:
    """``build_index(precision="int8")`` once (quantising unless cached), then fp32 and int8 alternately ``rounds``
    times (best of each): the speed ratio, the cosine of int8 to fp32 vectors, and both indexes' retrieval."""
    import simsearch
    from simsearch.evaluate import retrieval_metrics
    from simsearch.index import build_index

    out: dict = {}
    log("index (int8, first run: quantising unless cached)...")
    report = build_index(classes, work / "index-int8", backbone=bb, precision="int8")
    out["index_first_img_per_s"] = round(report.embedded / report.seconds, 1)
    # fp32 and int8 alternately into fresh indexes, best of each: the load of a shared machine drifts
    best = {"fp32": 0.0, "int8": 0.0}
    for r in range(rounds):
        for precision in ("fp32", "int8"):
            log(f"index ({precision}, round {r + 1} of {rounds})...")
            shutil.rmtree(work / f"index-{precision}", ignore_errors=True)
            report = build_index(classes, work / f"index-{precision}", backbone=bb, precision=precision)
            best[precision] = max(best[precision], report.embedded / report.seconds)
    out["index_cached_img_per_s"], out["fp32_img_per_s"] = round(best["int8"], 1), round(best["fp32"], 1)
    out["rounds"] = rounds
    rate = out["index_cached_img_per_s"]
    with simsearch.open_index(work / "index-int8") as idx:
        cal = idx.manifest.extra["embedding"]["calibration"]
    ivecs = index_vectors(work / "index-int8", files)
    fp32_vecs = index_vectors(work / "index-fp32", files)
    for name, precision in (("index (fp32)", "fp32"), ("index (int8)", "int8")):
        vecs = fp32_vecs if precision == "fp32" else ivecs
        row_rate = round(best[precision], 1)
        result["rows"].append(
            {
                "row": name,
                "img_per_s": row_rate,
                "speedup": round(row_rate / base_rate, 2),
                **cosine_stats(vecs, ref),
                "settings": f"best of {rounds} alternating runs"
                + (
                    f"; calibration {cal['count']} photos of the {cal['source']}; first run (quantising) "
                    f"{out['index_first_img_per_s']} img/s"
                    if precision == "int8"
                    else ""
                ),
            }
        )
    out["ratio_vs_fp32"] = round(rate / out["fp32_img_per_s"], 2)
    out["cos_vs_fp32_index"] = cosine_stats(ivecs, fp32_vecs)
    labels = np.asarray([Path(f).parent.name for f in files])
    keep = labels != "BACKGROUND_Google"
    for name, v in (("fp32", fp32_vecs), ("int8", ivecs)):
        m = retrieval_metrics(v[keep], labels[keep].tolist(), (1,))
        out[f"{name}_recall@1"], out[f"{name}_map@r"] = m["recall@1"], m["map@r"]
    return out


def print_table(r: dict) -> None:
    d = r["default"]
    print(
        f"{r['n_images']} images ({r['classes']} classes) from {r['images']}; backbone {r['backbone']}; "
        f"{r['cpus']} CPUs, native bf16: {r['cpu_bf16']}, OpenVINO: {r['openvino']}; "
        f"load average {r['load_avg_start']} -> {r['load_avg_end']}"
    )
    print(f"default settings: engine {d['engine']}, precision {d['precision']}, draft decoding on\n")
    print(f"{'end to end':<18} {'img/s':>8} {'x baseline':>11} {'cos median':>11} {'cos min':>9}  notes")
    for row in r["rows"]:
        if "skipped" in row:
            print(f"{row['row']:<18} {'-':>8} {'-':>11} {'-':>11} {'-':>9}  skipped: {row['skipped']}")
            continue
        notes = []
        if "startup_s" in row:
            notes.append(f"start-up {row['startup_s']} s, batch {row['batch']}")
        if "settings" in row:
            notes.append(row["settings"])
        print(
            f"{row['row']:<18} {row['img_per_s']:>8.1f} {row['speedup']:>10.2f}x {row['cos_median']:>11.5f} "
            f"{row['cos_min']:>9.5f}  {'; '.join(notes)}"
        )
    print(f"\n{'model only':<30} {'img/s':>8}")
    for m in r["model_only"]:
        print(f"{m['engine']:<30} {m['img_per_s']:>8.1f}")
    print(f"index (default) / best model-only: {r['index_vs_best_model_only']:.2f}")
    if "int8" in r:
        i8 = r["int8"]
        c = i8["cos_vs_fp32_index"]
        print(
            f"index int8 / index fp32: {i8['ratio_vs_fp32']:.2f}x ({i8['index_cached_img_per_s']} vs "
            f"{i8['fp32_img_per_s']} img/s, best of {i8['rounds']} alternating runs each; first int8 run incl. quantising {i8['index_first_img_per_s']} img/s); "
            f"cosine int8 vs fp32 vectors: median {c['cos_median']}, min {c['cos_min']}\n"
            f"retrieval on these {r['n_images']} photos: Recall@1 {i8['int8_recall@1']} (int8) vs "
            f"{i8['fp32_recall@1']} (fp32), MAP@R {i8['int8_map@r']} vs {i8['fp32_map@r']}"
        )
    print(f"CPU flags: {r['cpu_flags']}")
    if "draft" in r:
        print_draft_and_query(r)
    print(f"peak RSS of this benchmark process: {r['peak_rss_mb']} MB")
    print_full(r)


def print_draft_and_query(r: dict) -> None:
    dr = r["draft"]
    print(
        f"\ndraft decoding, {dr['images']} JPEGs of ~{dr['median_size']}: decode+preprocess "
        f"{dr['full_ms_per_image']} ms (full) vs {dr['draft_ms_per_image']} ms (draft) per image; "
        f"cosine draft vs full: median {dr['cos_median']:.5f}, min {dr['cos_min']:.5f}"
    )
    q = r["query"]
    print(
        f"query: `simsearch query` one new image, fresh process: {q['cli_query_s_median']} s median "
        f"(min {q['cli_query_s_min']} s, peak RSS {q['cli_peak_rss_mb']} MB); Index.search on an open index: "
        f"p50 {q['library_search_ms_p50']} ms, p90 {q['library_search_ms_p90']} ms "
        f"({q['library_searches']} new images; first search incl. model load {q['library_first_search_s']} s)"
    )


def print_full(r: dict) -> None:
    if "full" in r:
        f = r["full"]
        print("\nall images, fresh `simsearch index` processes:")
        for name in ("default", "reference", "int8"):
            x = f[name]
            print(
                f"  {name:<10} {x['images']} images, {x['img_per_s']} img/s, peak RSS {x['peak_rss_mb']} MB, "
                f"Recall@1 {x['recall@1']}, MAP@R {x['map@r']} ({x['settings']})"
            )
        c = f["cosine_default_vs_reference"]
        print(
            f"  default vs reference: cosine median {c['cos_median']}, min {c['cos_min']}; "
            f"delta Recall@1 {f['delta_recall@1']:+.4f}, MAP@R {f['delta_map@r']:+.4f}"
        )
        c = f["cosine_int8_vs_default"]
        print(
            f"  int8 vs default: cosine median {c['cos_median']}, min {c['cos_min']}; "
            f"delta Recall@1 {f['int8_delta_recall@1']:+.4f}, MAP@R {f['int8_delta_map@r']:+.4f}, "
            f"speed {f['int8']['img_per_s']} vs {f['default']['img_per_s']} img/s"
        )


if __name__ == "__main__":
    main()
