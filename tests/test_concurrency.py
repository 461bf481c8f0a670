"""Issue 5, concurrency: one writer at a time (a second one gets a clear message, not corruption), and readers
(the Python API, ``simsearch query``) keep working while a writer updates the index, seeing the old or the new
version, never a mix.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from badfiles import make_tiny_checkpoint, small_jpegs
from click.testing import CliRunner

from simsearch.cli import main
from simsearch.errors import IndexLockedError
from simsearch.index import MANIFEST, build_index, open_index, read_manifest, verify_index, writer_lock


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", input_size=48)


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the writer lock of ``path`` (until killed)."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom simsearch.index import writer_lock\n"
        "with writer_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_gets_a_clear_message(tmp_path, ckpt):
    photos = tmp_path / "photos"
    small_jpegs(photos, 4)
    out = tmp_path / "idx"
    build_index([photos], out, backbone=str(ckpt))
    before = (out / MANIFEST).read_bytes()
    holder = _hold_lock(out)
    try:
        with pytest.raises(IndexLockedError, match=rf"being written by another simsearch process \(pid {holder.pid}\)"):
            build_index([photos], out, prune=True)
        r = CliRunner().invoke(main, ["index", str(photos), "--out", str(out), "-q"])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert r.stderr.strip().splitlines() == [
            f"Error: {out} is being written by another simsearch process (pid {holder.pid}); wait for it to finish"
        ]
        with open_index(out) as idx:  # readers are not blocked by the lock
            assert len(idx.search(0, k=3)) == 3
    finally:
        holder.kill()  # kill -9: the lock dies with its process
        holder.wait()
    assert (out / MANIFEST).read_bytes() == before
    small_jpegs(photos, 6)
    assert build_index([photos], out).added == 2


def test_lock_in_the_same_process_is_exclusive(tmp_path):
    with writer_lock(tmp_path / "idx"), pytest.raises(IndexLockedError), writer_lock(tmp_path / "idx"):
        pass
    with writer_lock(tmp_path / "idx"):  # released on exit
        pass


def _check_consistent(idx, seen_ids: dict[int, str]) -> None:
    """One complete version: vectors, metadata and manifest agree; an id never changes its file."""
    m = idx.manifest
    items = idx.items()
    assert len(idx) == m.count == len(items)
    ids = np.array([it.id for it in items])
    assert len(set(ids.tolist())) == len(ids)
    assert len({it.path for it in items}) == len(items)
    if len(ids):
        _, vecs = idx.vectors(ids)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-3)
        hits = idx.search(int(ids[-1]), k=5)
        assert all(h.id in set(ids.tolist()) for h in hits)
    for it in items:
        assert seen_ids.setdefault(it.id, it.path) == it.path


@pytest.mark.slow
def test_readers_see_old_or_new_never_a_mix(tmp_path, ckpt):
    photos = tmp_path / "photos"
    out = tmp_path / "idx"
    small_jpegs(photos, 10, start_seed=1, prefix="first")
    build_index([photos], out, backbone=str(ckpt))  # an old version for the early reader
    early = open_index(out)
    early_count = len(early)
    small_jpegs(photos, 200)

    cmd = [sys.executable, "-m", "simsearch.cli", "index", str(photos), "--out", str(out),
           "--batch-size", "4", "--commit-every", "8", "-q"]  # fmt: skip
    writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    generations, counts, seen_ids, queries, second_writer = set(), [], {}, 0, None
    try:
        while writer.poll() is None:
            with open_index(out) as idx:  # a fresh reader: always one whole generation
                _check_consistent(idx, seen_ids)
                generations.add(idx.manifest.generation)
                counts.append(len(idx))
            if second_writer is None and len(generations) >= 2:
                second_writer = subprocess.run(
                    [sys.executable, "-m", "simsearch.cli", "index", str(photos), "--out", str(out)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            elif writer.poll() is None and queries < 2:  # the command line reads meanwhile too
                q = subprocess.run(
                    [sys.executable, "-m", "simsearch.cli", "query", str(out), "--id", "0", "-k", "3", "--json"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert q.returncode == 0, q.stderr
                queries += 1
            # the reader opened before the writer started still serves its old version
            assert len(early) == early_count and len(early.search(0, k=3)) == 3
            time.sleep(0.05)  # leave the CPU to the writer
        _, stderr = writer.communicate()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, stderr.decode()
    assert counts == sorted(counts), "a reader saw the index go back in time"
    print(f"\nreaders saw {len(generations)} generations, {len(counts)} opens, counts {counts[0]}..{counts[-1]}")
    assert len(generations) >= 2
    assert second_writer is not None
    # The second writer either ran into the lock (a clear message, exit 1) or started after the first had
    # released it (its process may still have been exiting) and found nothing left to do; never a traceback.
    assert "Traceback" not in second_writer.stderr
    if second_writer.returncode == 0:
        assert "0 added, 0 updated, 0 removed, 210 unchanged" in second_writer.stdout + second_writer.stderr
    else:
        assert second_writer.returncode == 1
        assert "being written by another simsearch process" in second_writer.stderr
    with open_index(out) as idx:
        _check_consistent(idx, seen_ids)
        assert len(idx) == 210
    assert len(early) == early_count and early.search(0, k=3)  # still usable after old files were removed
    early.close()
    assert verify_index(out)[0] == []
    assert read_manifest(out).generation >= max(generations)
    leftovers = [p.name for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".meta-next")]
    assert leftovers == []
