#!/usr/bin/env python
"""Query start-up benchmark (issue 15, point 3): ``simsearch query INDEX IMAGE`` of one new image, fresh processes.

Usage, from the repository root::

    .venv/bin/python scripts/bench_startup.py                  # builds the two indexes in a temp dir, 15 runs each
    .venv/bin/python scripts/bench_startup.py --work /tmp/sb    # keep (and reuse) the built indexes there
    .venv/bin/python scripts/bench_startup.py --runs 25 --importtime --timeline 5 --json

Two indexes, both built with ``simsearch index`` and default settings (engine auto: OpenVINO fp32 on a CPU without
native bf16): the bundled sample (35 photos) and ~1,000 Caltech-101 photos (whole class folders, as
``bench_index.py`` picks them), read in place from ``../shared/data/caltech101/images`` (or ``--caltech``); the
Caltech index is left out when the photos are absent. The query image is a Caltech photo of a class that is not
indexed (else a sample photo resized in memory and written to the temp dir, so it is a new image).

For each index: ``--runs`` fresh processes of the real command (what the ``simsearch`` console script runs:
``simsearch.cli.main`` with ``query INDEX IMAGE -k 10 --json``): median, p90 and min wall time; and, as the
baseline of the same run, a bare ``python -c pass``. Then the breakdown of one process (the median of
``--breakdown-runs`` processes per phase): the same steps the command takes, timed one by one (imports of numpy,
PIL, faiss, openvino, simsearch, the CLI; index open; model load/compile; decode + preprocess; inference; search;
JSON output), and which heavy modules (torch, timm, torchvision, ...) the process ended up importing. The command
itself loads the model (and embeds the photo) in a thread started before it imports the query code
(``simsearch.preload``), so its wall time is less than the sum of the phases; "process wall" minus "in-process
total" is the interpreter's start and exit. The breakdown runs without the CLI, hence with numpy's and FAISS's
default threads (the command starts one each: ``simsearch.config.STARTUP``). ``--timeline`` shows the real
command's milestones instead. The machine
may be shared: the load average is printed before and after; compare figures within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "simsearch" / "sample"
CALTECH_CANDIDATES = [
    REPO.parent / "shared" / "data" / "caltech101" / "images",
    Path("/work/shared/data/caltech101/images"),
]
HEAVY = (
    "torch",
    "timm",
    "torchvision",
    "openvino.tools.ovc",
    "pydantic",
    "fastapi",
    "pandas",
    "pyarrow",
    "nncf",
    "ray",
    "scipy",
)

# What the `simsearch` console script runs (entry point simsearch.cli:main).
CLI = "import sys\nfrom simsearch.cli import main\nsys.argv[0] = 'simsearch'\nmain()\n"

# One process, the command's steps timed one by one; prints one JSON line. argv: index, image.
BREAKDOWN = r"""
import sys, time
T = [("start", time.perf_counter(), time.process_time())]
def mark(name):
    T.append((name, time.perf_counter(), time.process_time()))
import numpy; mark("import numpy")
import PIL.Image; mark("import PIL")
import faiss; mark("import faiss")
import simsearch; mark("import simsearch (rest)")
import simsearch.cli; mark("import simsearch.cli (rest: click)")
import os
if os.path.exists("simsearch/index_reader.py"):  # what this tree's command opens (no build or vote code)
    from simsearch.index_reader import IndexReader
    open_index = IndexReader.open
else:
    from simsearch.index import open_index
from simsearch.search import Rules
mark("import the query code (index, search, embed...)")
from simsearch.engines.openvino import ov_core
ov_core()  # the first `import openvino` of the query path, as simsearch does it, and its Core
mark("import openvino + Core()")
import json
index_path, image = sys.argv[1], sys.argv[2]
idx = open_index(index_path)
idx.live_state().snapshot.faiss  # the FAISS index and metadata are read lazily: read them here
mark("index open (manifest, FAISS, metadata)")
import inspect
from simsearch.engines.openvino import OpenVINOEngine
params = inspect.signature(OpenVINOEngine.__init__).parameters
if "hint" in params:  # as this tree's `simsearch query` does (its model loads in a thread, here in sequence)
    idx.embedder_options["engine_options"] = {"hint": "latency", "threads": 1}
    if "static_batch" in params:
        idx.embedder_options["engine_options"]["static_batch"] = 1
idx.resolve_item(image)  # the command first looks the path up among indexed files
mark("query lookup (is the image indexed?)")
emb = idx.embedder
mark("model load + compile")
x = emb.preprocess(image)
mark("image decode + preprocess")
batch = x[None] if hasattr(x, "ndim") else x.unsqueeze(0)
v = emb.engine(batch)
mark("inference")
hits = idx.search(v[0], k=10, filter={"label": None, "path_prefix": None}, rules=Rules(), augment="auto")
mark("search")
out = json.dumps({"results": [h.to_dict() for h in hits]}, indent=2, default=str)
mark("JSON output")
idx.close()
phases = {b[0]: round(1000 * (b[1] - a[1]), 1) for a, b in zip(T, T[1:])}
cpu = {b[0]: round(1000 * (b[2] - a[2]), 1) for a, b in zip(T, T[1:])}
heavy = sorted(m for m in HEAVY if m in sys.modules)
print("BREAKDOWN " + json.dumps({"phases_ms": phases, "phases_cpu_ms": cpu, "total_ms": round(1000 * (T[-1][1] - T[0][1]), 1),
      "heavy_modules": heavy, "modules": len(sys.modules), "engine": repr(emb.engine)}))
"""


# The real command, with time stamps (wall clock, comparable with the parent's) at its milestones: first imports
# of the heavy packages and of the query code, the model's background load, the wait for it, the end of main()
# and of the interpreter's exit handlers. Prints one JSON line on stderr at exit. argv: the command's.
TIMELINE = r"""
import atexit, builtins, json, sys, threading, time
M = [("interpreter ready (site imported)", time.time())]
def mark(name):
    M.append((name, time.time()))
WATCH = ("numpy", "PIL", "click", "openvino", "faiss", "simsearch.embed", "simsearch.index")
_import = builtins.__import__
def wrap(cls, name, before, after):
    fn = getattr(cls, name, None)
    if fn is None:
        return
    def wrapper(*args, **kwargs):
        mark(before)
        try:
            return fn(*args, **kwargs)
        finally:
            mark(after)
    setattr(cls, name, wrapper)
def hook_preload():
    p = sys.modules["simsearch.preload"].PendingEmbedder
    wrap(p, "__init__", "main: starts the model's load", "main: model thread started")
    wrap(p, "_load", "thread: load begins (compile...)", "thread: load done")
    wrap(p, "result", "main: waits for the model", "main: got the model")
    wrap(p, "embedded", "main: takes the photo's vectors", "main: got them")
    wrap(sys.modules["simsearch.preload"], "precompile_for", "main: starts the model's compile ahead", "main: compile started")
def watched(name, globals=None, locals=None, fromlist=(), level=0):
    full = name
    if level and globals:
        base = globals.get("__package__") or ""
        base = base.rsplit(".", level - 1)[0] if level > 1 else base
        full = f"{base}.{name}" if name else base
    first = full in WATCH and full not in sys.modules
    if first:
        mark(f"import {full} ...")
    module = _import(name, globals, locals, fromlist, level)
    if first:
        mark(f"import {full} done" + ("" if threading.current_thread() is threading.main_thread() else " (thread)"))
    if not M[0][0].startswith("hooked") and "simsearch.preload" in sys.modules and hasattr(sys.modules["simsearch.preload"], "PendingEmbedder"):
        M[0] = ("hooked " + M[0][0], M[0][1])
        hook_preload()
    return module
builtins.__import__ = watched
atexit.register(lambda: sys.stderr.write("TIMELINE " + json.dumps(M + [("exit handlers done", time.time())]) + "\n"))
from simsearch.cli import main
sys.argv[0] = "simsearch"
try:
    main()
finally:
    mark("main() returned")
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


PYCACHE: Path | None = None  # --bytecode: each tree's .pyc files go under PYCACHE/<n> (see main)


def env(repo: Path = REPO) -> dict:
    """The environment of a child process running ``repo``'s code (children also start in ``repo``: with
    ``python -c`` the current directory comes first on ``sys.path``)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [e.get("PYTHONPATH")])])
    if PYCACHE is not None:
        e.pop("PYTHONDONTWRITEBYTECODE", None)
        e["PYTHONPYCACHEPREFIX"] = str(PYCACHE / repo.resolve().as_posix().strip("/").replace("/", "_"))
    return e


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_flags() -> list[str]:
    from simsearch.system import cpu_flags as flags

    interesting = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [f for f in interesting if f in flags()]


def run_once(argv: list[str], repo: Path = REPO) -> tuple[float, float]:
    """(wall s, CPU s: user + system of the process) of one fresh process."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env(repo), cwd=repo, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr}")
    return wall, cpu


def timed_runs(argv: list[str], runs: int, repos: list[Path]) -> list[list[tuple[float, float]]]:
    """``runs`` fresh processes per code tree, interleaved (so that a change of load hits every tree alike)."""
    out: list[list[tuple[float, float]]] = [[] for _ in repos]
    for _ in range(runs):
        for i, repo in enumerate(repos):
            out[i].append(run_once(argv, repo))
    return out


def stats(runs: list[tuple[float, float]]) -> dict:
    s = sorted(w for w, _ in runs)
    p90 = s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]
    cpu = statistics.median(c for _, c in runs)
    return {
        "median_s": round(statistics.median(s), 3),
        "p90_s": round(p90, 3),
        "min_s": round(s[0], 3),
        "cpu_median_s": round(cpu, 3),
        "runs": len(s),
    }


def breakdown(index: Path, image: Path, runs: int, repo: Path = REPO) -> dict:
    outs = []
    code = BREAKDOWN.replace("HEAVY", repr(HEAVY))
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(index), str(image)],
            env=env(repo),
            cwd=repo,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BREAKDOWN ")]
        if proc.returncode or not lines:
            raise SystemExit(f"breakdown failed:\n{proc.stderr}")
        d = json.loads(lines[0].split(" ", 1)[1])
        d["wall_ms"] = round(1000 * wall, 1)
        outs.append(d)
    phases = {p: round(statistics.median(o["phases_ms"][p] for o in outs), 1) for p in outs[0]["phases_ms"]}
    cpu = {p: round(statistics.median(o["phases_cpu_ms"][p] for o in outs), 1) for p in outs[0]["phases_ms"]}
    return {
        "phases_ms": phases,
        "phases_cpu_ms": cpu,
        "in_process_ms": round(statistics.median(o["total_ms"] for o in outs), 1),
        "wall_ms": round(statistics.median(o["wall_ms"] for o in outs), 1),
        "heavy_modules": outs[0]["heavy_modules"],
        "modules": outs[0]["modules"],
        "engine": outs[0]["engine"],
    }


def importtime(index: Path, image: Path, top: int = 15, repo: Path = REPO) -> list[tuple[str, int]]:
    """The modules with the largest cumulative import time (µs) in one run of the command (top-level ones)."""
    argv = [sys.executable, "-X", "importtime", "-c", CLI, "query", str(index), str(image), "-k", "10", "--json"]
    proc = subprocess.run(argv, env=env(repo), cwd=repo, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 2:  # the top-level imports and their direct children
            rows.append((name.strip(), int(parts[1]), depth))
    rows.sort(key=lambda r: -r[1])
    return [(("  " * (d - 1)) + n, c) for n, c, d in rows[:top]]


def timeline(index: Path, image: Path, runs: int, repo: Path = REPO) -> list[tuple[str, float]]:
    """Milestones of the real command (ms since the process was spawned), of the median-wall of ``runs``
    processes, ending with the process's exit as its parent sees it."""
    argv = [sys.executable, "-c", TIMELINE, "query", str(index), str(image), "-k", "10", "--json"]
    found = []
    for _ in range(runs):
        t0 = time.time()
        proc = subprocess.run(argv, env=env(repo), cwd=repo, capture_output=True, text=True)
        t1 = time.time()
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("TIMELINE ")]
        if proc.returncode or not lines:
            raise SystemExit(f"timeline failed:\n{proc.stderr}")
        marks = [
            (n.removeprefix("hooked "), round(1000 * (t - t0), 1)) for n, t in json.loads(lines[0].split(" ", 1)[1])
        ]
        found.append([*marks, ("process exited", round(1000 * (t1 - t0), 1))])
    return sorted(found, key=lambda m: m[-1][1])[len(found) // 2]


def caltech_dir(given: Path | None) -> Path | None:
    for p in [given] if given else CALTECH_CANDIDATES:
        if p is not None and p.is_dir():
            return p
    return None


def pick_classes(root: Path, limit: int) -> tuple[list[Path], list[Path]]:
    """(class folders until ``limit`` photos, photos of the other classes), in bench_index.py's fixed order."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_index import pick_classes as pick

    chosen, _, rest = pick(root, limit)
    return chosen, rest


def build(folders: list[Path], out: Path) -> None:
    if (out / "manifest.json").exists():
        log(f"reusing {out}")
        return
    log(f"building {out} from {len(folders)} folder(s) (default settings)...")
    argv = [sys.executable, "-c", CLI, "index", *map(str, folders), "-o", str(out), "-q"]
    subprocess.run(argv, env=env(), check=True)


def new_sample_image(work: Path) -> Path:
    from PIL import Image

    src = next(p for p in sorted(SAMPLE.rglob("*.jpg")))
    out = work / "new_query.jpg"
    with Image.open(src) as im:
        im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4)).save(out, quality=90)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="fresh-process runs of the command per index [15]")
    ap.add_argument("--breakdown-runs", type=int, default=3, help="processes timed phase by phase per index [3]")
    ap.add_argument("--limit", type=int, default=1000, help="Caltech photos in the larger index [1000]")
    ap.add_argument("--caltech", type=Path, help="Caltech-101 images folder [default: ../shared/data/...]")
    ap.add_argument("--work", type=Path, help="where to build (and reuse) the indexes [default: a temp dir]")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of the repository (e.g. `git archive fe4a9e6 | tar -x -C DIR`): its runs are "
        "interleaved with this one's and the ratio printed",
    )
    ap.add_argument(
        "--bytecode",
        action="store_true",
        help="cached bytecode, as an installed package has (a .pyc cache per tree under the work dir, warmed by "
        "one run first) even where PYTHONDONTWRITEBYTECODE is set [default: the environment as it is]",
    )
    ap.add_argument("--importtime", action="store_true", help="also the slowest imports (python -X importtime)")
    ap.add_argument(
        "--timeline",
        type=int,
        default=0,
        metavar="N",
        help="also the milestones of the real command (imports, the model's background load, waits, exit): the "
        "median-wall of N processes per tree [0: none]",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args()

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_startup-")
    work = args.work or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    indexes: list[tuple[str, Path]] = []
    build([SAMPLE], work / "sample")
    indexes.append(("sample", work / "sample"))
    caltech = caltech_dir(args.caltech)
    image = None
    if caltech:
        classes, others = pick_classes(caltech, args.limit)
        build(classes, work / f"caltech{args.limit}")
        indexes.append((f"caltech{args.limit}", work / f"caltech{args.limit}"))
        image = others[0]
    image = image or new_sample_image(work)
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    if args.bytecode:
        global PYCACHE
        PYCACHE = work / "pycache"

    import simsearch

    result: dict = {
        "python": platform.python_version(),
        "simsearch": simsearch.__version__,
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "bytecode_cache": bool(args.bytecode)
        or not (sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "image": str(image),
        "trees": {k: str(v) for k, v in trees.items()},
        "load_avg_start": load(),
        "indexes": [],
    }
    log("python -c pass ...")
    timed_runs([sys.executable, "-c", "pass"], 1, [REPO])
    result["python_bare"] = stats(timed_runs([sys.executable, "-c", "pass"], args.runs, [REPO])[0])
    for name, path in indexes:
        log(f"{name}: {args.runs} fresh `simsearch query` processes per tree ...")
        cmd = [sys.executable, "-c", CLI, "query", str(path), str(image), "-k", "10", "--json"]
        if PYCACHE is not None:  # compile (and cache) every module once
            timed_runs(cmd, 1, list(trees.values()))
            timed_runs(
                [sys.executable, "-c", BREAKDOWN.replace("HEAVY", "()"), str(path), str(image)], 1, list(trees.values())
            )
        load_before = load()
        runs = timed_runs(cmd, args.runs, list(trees.values()))
        row: dict = {"index": name, "path": str(path), "load_avg": [load_before, load()]}
        for (tree, repo), r in zip(trees.items(), runs):
            log(f"{name}: breakdown of {tree} ...")
            row[tree] = {**stats(r), "breakdown": breakdown(path, image, args.breakdown_runs, repo)}
            if args.importtime:
                row[tree]["importtime_us"] = importtime(path, image, repo=repo)
            if args.timeline:
                row[tree]["timeline_ms"] = timeline(path, image, args.timeline, repo=repo)
        if "baseline" in row:
            row["ratio_median"] = round(row["this"]["median_s"] / row["baseline"]["median_s"], 3)
            row["ratio_cpu"] = round(row["this"]["cpu_median_s"] / row["baseline"]["cpu_median_s"], 3)
        result["indexes"].append(row)
    result["load_avg_end"] = load()
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def print_table(r: dict) -> None:
    print(f"python {r['python']}, simsearch {r['simsearch']}, {r['cpus']} CPUs, flags: {' '.join(r['cpu_flags'])}")
    print(
        f"bytecode cache: {'on' if r['bytecode_cache'] else 'off (PYTHONDONTWRITEBYTECODE: sources compiled each run)'}"
    )
    print(f"load average at start {r['load_avg_start']}, at end {r['load_avg_end']}")
    print(f"query image: {r['image']}")
    print("trees: " + ", ".join(f"{k} = {v}" for k, v in r["trees"].items()))
    b = r["python_bare"]
    print(f"python -c pass: median {b['median_s']:.3f} s, p90 {b['p90_s']:.3f} s ({b['runs']} runs)")
    for row in r["indexes"]:
        print(f"\n[{row['index']}] simsearch query, load average {row['load_avg'][0]} -> {row['load_avg'][1]}")
        for tree in r["trees"]:
            t = row[tree]
            print(
                f"  {tree:>8}: median {t['median_s']:.3f} s, p90 {t['p90_s']:.3f} s, min {t['min_s']:.3f} s, "
                f"CPU {t['cpu_median_s']:.3f} s ({t['runs']} fresh processes)"
            )
        if "ratio_median" in row:
            print(f"  this / baseline: median wall {row['ratio_median']:.3f}, CPU {row['ratio_cpu']:.3f}")
        trees = list(r["trees"])
        bds = [row[t]["breakdown"] for t in trees]
        print("  breakdown, ms wall / CPU (median of processes): " + " | ".join(f"{t:>15}" for t in trees))
        print(
            f"    {'python start (bare interpreter, above)':<48} "
            + " | ".join(f"{1000 * b['median_s']:7.1f} / {1000 * b['cpu_median_s']:5.0f}" for _ in trees)
        )
        for phase in bds[0]["phases_ms"]:
            cells = [
                (bd["phases_ms"].get(phase, float("nan")), bd["phases_cpu_ms"].get(phase, float("nan"))) for bd in bds
            ]
            print(f"    {phase:<48} " + " | ".join(f"{w:7.1f} / {c:5.0f}" for w, c in cells))
        print(f"    {'in-process total':<48} " + " | ".join(f"{bd['in_process_ms']:9.1f}" for bd in bds))
        print(f"    {'process wall':<48} " + " | ".join(f"{bd['wall_ms']:9.1f}" for bd in bds))
        for tree, bd in zip(trees, bds):
            print(
                f"  {tree}: heavy modules imported: {', '.join(bd['heavy_modules']) or 'none'}; {bd['modules']} modules"
            )
            print(f"  {tree}: engine {bd['engine']}")
        for tree in trees:
            if row[tree].get("timeline_ms"):
                print(f"  {tree}: timeline of the command (ms since spawn; a process of median wall)")
            for name, ms in row[tree].get("timeline_ms", []):
                print(f"    {ms:8.1f}  {name}")
        for tree in trees:
            for name, us in row[tree].get("importtime_us", []):
                print(f"    {tree} import {name:<44} {us / 1000:8.1f} ms")


if __name__ == "__main__":
    main()
