"""Issue 5, crash safety: ``kill -9`` a real ``simsearch index`` process at random moments, again and again, and
re-run the same command each time. After every kill the index on disk must pass ``simsearch verify`` and open;
what it holds only ever grows; the work lost by a kill (to be redone by the next run) is at most one
uncommitted chunk; and the index finally holds exactly one entry per readable image (0 lost, 0 duplicates).

The killed processes are the real command line, run through a thin wrapper that appends to a file how many images
the embedder has handed to the index writer so far (that is how the lost work is measured). The seed of the random
moments is printed; set ``SIMSEARCH_CRASH_SEED`` to replay one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from badfiles import make_tiny_checkpoint, small_jpegs

from simsearch.index import MANIFEST, open_index, read_manifest

pytestmark = pytest.mark.slow

N_GOOD, N_BAD = 240, 4
BATCH, COMMIT_EVERY = 4, 12
MIN_TRIALS = 10

# The real CLI, plus a progress tap: after each batch is handed to the writer, append the running total.
RUNNER = """
import os, sys
from simsearch import embed

_orig = embed.Embedder.embed_files

def _tapped(self, *args, **kwargs):
    fd = os.open(os.environ["CRASH_TAP"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    done = 0
    for batch in _orig(self, *args, **kwargs):
        done += len(batch.items) + len(batch.skipped)
        os.write(fd, b"%d\\n" % done)
        yield batch

embed.Embedder.embed_files = _tapped
from simsearch.cli import main
sys.exit(main(sys.argv[1:], prog_name="simsearch"))
"""


def _handed(tap: Path) -> int:
    try:
        lines = tap.read_text().split()
    except FileNotFoundError:
        return 0
    return int(lines[-1]) if lines else 0


def _committed(out: Path) -> tuple[int, int, int] | None:
    """(generation, items, skipped) of the committed index, or None before the first commit."""
    if not (out / MANIFEST).exists():
        return None
    m = read_manifest(out)
    return m.generation, m.count, m.skipped


def _writing_vectors(out: Path) -> bool:
    try:
        return any(n.startswith(".vectors-") for n in os.listdir(out))
    except FileNotFoundError:
        return False


def _interrupted_commit(out: Path, committed) -> bool:
    """Whether the kill left a half-written next version behind (it struck during a commit)."""
    if not out.exists():
        return False
    gen = committed[0] if committed else 0
    for p in out.iterdir():
        if ".tmp" in p.name:
            return True
        if p.name.startswith(("vectors-", "meta-")) and int(p.name.split("-")[1].split(".")[0]) > gen:
            return True
    return False


def _verify_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simsearch.cli", "verify", str(out), "--json"], capture_output=True, text=True
    )


def _check_index(out: Path, good: set[str], bad: set[str]) -> tuple[int, int]:
    """The committed index is whole and holds only real files, once each; returns (items, skipped)."""
    r = _verify_cli(out)
    assert r.returncode == 0, f"simsearch verify failed after a kill: {r.stderr}"
    with open_index(out) as idx:
        items = idx.items()
        paths = [it.path for it in items]
        assert len(paths) == len(set(paths)), "duplicate paths"
        assert len({it.id for it in items}) == len(items), "duplicate ids"
        assert set(paths) <= good, f"unknown entries: {set(paths) - good}"
        skipped = {os.path.relpath(p, idx.manifest.roots[0]) for p, _ in idx.skipped()}
        assert skipped <= bad
        if items:
            assert idx.search(items[0].id, k=3)
        return len(items), len(skipped)


def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    seed = int(os.environ.get("SIMSEARCH_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", input_size=32)
    photos = tmp_path / "photos"
    good = set(small_jpegs(photos, N_GOOD, size=(40, 30)))
    bad = {f"bad/broken_{i}.jpg" for i in range(N_BAD)}
    for rel in bad:
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(b"not a jpeg" * (1 + len(rel)))
    total = len(good) + len(bad)
    out = tmp_path / "idx"
    tap = tmp_path / "tap"
    cmd = [sys.executable, "-c", RUNNER, "index", str(photos), "--out", str(out), "--backbone", str(ckpt),
           "--batch-size", str(BATCH), "--commit-every", str(COMMIT_EVERY), "--workers", "2", "-q", "--json"]  # fmt: skip
    env = dict(os.environ, CRASH_TAP=str(tap), OMP_NUM_THREADS="1")

    trials = lost_max = unloadable = completed = 0
    kill_phases: dict[str, int] = {}
    resumed_embedded = []
    while True:  # kill runs until MIN_TRIALS kills, then let one run complete
        before = _committed(out)
        done_before = (before[1] + before[2]) if before else 0
        tap.unlink(missing_ok=True)
        # a random moment: during start-up (1 in 8), as soon as a commit is seen writing (1 in 4), or once a random
        # share of the remaining work is handed over
        mode = rng.random()
        target = -1 if mode < 0.125 else rng.randrange(1, max(2, total - done_before + 1))
        in_commit = 0.125 <= mode < 0.375
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 300
        if trials >= MIN_TRIALS:
            pass
        elif target < 0:
            time.sleep(rng.uniform(0.05, 2.0))
        elif in_commit:
            while proc.poll() is None and time.monotonic() < deadline and not _writing_vectors(out):
                time.sleep(0.001)
        else:
            while proc.poll() is None and _handed(tap) < target and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None and trials < MIN_TRIALS:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            trials += 1
            handed = _handed(tap)
            after = _committed(out)
            phase = "start-up" if handed == 0 else "embedding"
            if _interrupted_commit(out, after):
                phase = "mid-commit"
            kill_phases[phase] = kill_phases.get(phase, 0) + 1
            if after is None:
                assert before is None
                continue  # killed before the first commit: no index yet, and none was promised
            try:
                n_items, n_skipped = _check_index(out, good, bad)
            except Exception:
                unloadable += 1
                raise
            assert (after[1], after[2]) == (n_items, n_skipped)
            if before:
                assert after[0] >= before[0] and n_items >= before[1], "a kill lost committed work"
            lost = done_before + handed - (n_items + n_skipped)  # handed to the writer but not committed
            assert 0 <= lost <= COMMIT_EVERY + BATCH, f"a kill lost {lost} images of work"
            lost_max = max(lost_max, lost)
        else:  # the run finished first (or we have our kills): it must complete cleanly
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr.decode(errors="replace")
            report = json.loads(stdout)
            items_before = before[1] if before else 0
            # resuming embeds exactly what was not committed: nothing committed is embedded again
            assert report["embedded"] == len(good) - items_before, report
            assert report["count"] == len(good)
            resumed_embedded.append(report["embedded"])
            completed += 1
            n_items, n_skipped = _check_index(out, good, bad)
            assert (n_items, n_skipped) == (len(good), len(bad))
            if trials >= MIN_TRIALS:
                break
            shutil.rmtree(out)  # start over for more kills

    # the end state: exactly one entry per readable image, every bad file reported, no leftovers
    with open_index(out) as idx:
        assert sorted(it.path for it in idx.items()) == sorted(good)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if ".tmp" in n or n.startswith(".meta-next")], names
    m = read_manifest(out)
    assert {n for n in names if n.startswith(("vectors-", "meta-"))} <= {
        f"vectors-{g:06d}.faiss" for g in (m.generation - 1, m.generation)
    } | {f"meta-{g:06d}.sqlite" for g in (m.generation - 1, m.generation)}
    print(
        f"\nkill -9 (seed {seed}): {trials} trials ({kill_phases}), {completed} completed runs; "
        f"lost 0, duplicates 0, unloadable {unloadable}; most work redone after a kill: {lost_max} images "
        f"(bound {COMMIT_EVERY + BATCH}); embedded by completing runs: {resumed_embedded}"
    )
