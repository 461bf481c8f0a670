"""Issue 5, bad input files: ``simsearch index`` over a corpus of every kind of bad or odd file (made by
``tests/badfiles.py``) indexes every good image, skips every bad one with a one-line reason (stderr,
``skipped.csv``, JSON report), exits 0 (``--strict``: non-zero), keeps memory bounded on a decompression bomb,
and a query with a bad image is a one-line error, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badfiles import IS_ROOT, NON_UTF8_NAME, asymmetric, make_corpus, make_tiny_checkpoint, pattern
from click.testing import CliRunner
from PIL import Image

from simsearch.cli import main
from simsearch.images import load_image
from simsearch.index import build_index, open_index, read_manifest, verify_index

SETPRIV = shutil.which("setpriv")


def _unprivileged_prefix() -> list[str] | None:
    """Run a command as root without the capabilities that let root read any file (so chmod 000 bites)."""
    if not IS_ROOT:
        return []
    if SETPRIV is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = [SETPRIV, "--bounding-set", caps, "--inh-caps", caps, "--"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def _cli(*args, prefix=(), cwd=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-m", "simsearch.cli", *[os.fsencode(a) if isinstance(a, str) else a for a in args]]
    return subprocess.run(cmd, capture_output=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, ckpt):
    """The corpus, indexed once by a real ``simsearch index`` process (as an unprivileged root if we are root)."""
    base = tmp_path_factory.mktemp("bad")
    prefix = _unprivileged_prefix()
    corpus = make_corpus(base, unreadable=True)
    if IS_ROOT:
        target = corpus.root / "bad" / "no_permission.jpg"
        if prefix is not None:
            pattern(41).save(target)
            os.chmod(target, 0)
            corpus.bad["bad/no_permission.jpg"] = ("file without read permission", "permission denied")
            corpus.notes[:] = ["no-read-permission file: indexed by root without CAP_DAC_OVERRIDE (setpriv)"]
        else:
            prefix = []
            corpus.notes[:] = ["no-read-permission file: skipped (root reads anything and setpriv is missing)"]
    out = base / "idx"
    proc = _cli("index", str(corpus.root), "--out", str(out), "--backbone", str(ckpt), "--batch-size", "4", "--json",
                prefix=prefix)  # fmt: skip
    yield corpus, out, proc
    for p in corpus.root.rglob("*"):  # let pytest clean up
        if not p.is_symlink() and p.is_file():
            os.chmod(p, 0o644)


def _stderr_lines(proc) -> list[str]:
    return proc.stderr.decode("utf-8", "surrogateescape").splitlines()


def test_index_completes_exit_0(indexed):
    corpus, out, proc = indexed
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    problems, stats = verify_index(out)
    assert problems == []
    assert stats["count"] == len(corpus.good)


def test_every_good_image_is_indexed(indexed):
    corpus, out, _ = indexed
    with open_index(out) as idx:
        paths = sorted(it.path for it in idx.items())
        assert paths == sorted(corpus.good), "indexed files differ from the good ones"
        for it in idx.items():
            assert it.abspath.exists()  # non-UTF-8 names round-trip to the real file
            assert idx.id_for_path(it.abspath) == it.id


def test_every_bad_file_is_reported_once_with_a_one_line_reason(indexed):
    corpus, out, proc = indexed
    root = str(corpus.root)
    # stderr: one line per bad file, naming it and the reason
    lines = [ln for ln in _stderr_lines(proc) if "skipped " in ln]
    for rel, (kind, word) in corpus.bad.items():
        hits = [ln for ln in lines if ln.endswith(f"{root}/{rel}") or f"{root}/{rel}: " in ln]
        assert len(hits) == 1, f"{kind}: {hits}"
        assert word.lower() in hits[0].lower(), f"{kind}: {hits[0]}"
    assert len(lines) == len(corpus.bad)
    # skipped.csv inside the index: the same files, with reasons (non-UTF-8 names as their bytes)
    text = (out / "skipped.csv").read_bytes().decode("utf-8", "surrogateescape")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["path", "reason"]
    reported = {os.path.relpath(p, root): reason for p, reason in rows[1:]}
    assert set(reported) == set(corpus.bad)
    for rel, (kind, word) in corpus.bad.items():
        assert word.lower() in reported[rel].lower(), kind
        assert "\n" not in reported[rel]
    # the JSON report
    report = json.loads(proc.stdout)
    assert {os.path.relpath(s["path"], root) for s in report["skipped"]} == set(corpus.bad)
    assert report["added"] == len(corpus.good) and report["count"] == len(corpus.good)
    assert read_manifest(out).skipped == len(corpus.bad)


def test_non_images_are_ignored_not_reported(indexed):
    corpus, out, _ = indexed
    text = (out / "skipped.csv").read_bytes().decode("utf-8", "surrogateescape")
    for rel in corpus.ignored:
        assert rel not in text
    with open_index(out) as idx:
        assert not set(corpus.ignored) & {it.path for it in idx.items()}


def test_corpus_covers_the_issue_list(indexed):
    corpus, _, _ = indexed
    required = {
        "zero-byte file", "truncated JPEG", "random bytes .jpg", "text file .png", "HTML saved as .jpg",
        "16-bit grayscale PNG", "CMYK JPEG", "palette PNG with transparency", "LA image", "EXIF-rotated JPEG",
        "animated GIF", "1x1 image", "10000x10 image", "decompression bomb 30000x30000", "WebP", "TIFF",
        "JPEG without extension", "broken symlink", "symlink loop in the folder tree", "name with spaces",
        "unicode name", "non-UTF-8 name", "directory named x.jpg",
    }  # fmt: skip
    if "bad/no_permission.jpg" in corpus.bad:
        required.add("file without read permission")
    assert required <= corpus.kinds, required - corpus.kinds
    print(f"\n{len(corpus.kinds)} kinds: {len(corpus.good)} good files indexed, {len(corpus.bad)} bad reported; "
          f"{'; '.join(corpus.notes)}")  # fmt: skip


def _readable_now(corpus) -> set[str]:
    """As full root (this process) the no-permission file is readable: a re-run retries and indexes it."""
    return {"bad/no_permission.jpg"} & set(corpus.bad) if IS_ROOT else set()


def test_rerun_changes_nothing_and_reports_the_skips_again(indexed, ckpt, tmp_path):
    corpus, out, _ = indexed
    copy = tmp_path / "idx"
    shutil.copytree(out, copy)
    gen = read_manifest(copy).generation
    report = build_index([corpus.root], copy, batch_size=4)
    now_readable = _readable_now(corpus)
    assert report.embedded == len(now_readable) and report.unchanged == len(corpus.good)
    assert {os.path.relpath(p, corpus.root) for p, _ in report.skipped} == set(corpus.bad) - now_readable
    assert read_manifest(copy).generation == gen + len(now_readable)  # nothing new: nothing written
    assert verify_index(copy)[0] == []


def test_strict_makes_skips_fatal(indexed, ckpt, tmp_path):
    corpus, _, _ = indexed
    r = CliRunner().invoke(main, ["index", str(corpus.root), "--out", str(tmp_path / "s"), "--backbone", str(ckpt),
                                  "--strict", "-q"])  # fmt: skip
    assert r.exit_code != 0
    assert "--strict" in r.stderr and "skipped.csv" in r.stderr
    assert "Traceback" not in r.output
    assert verify_index(tmp_path / "s")[0] == []  # the good images were still saved


@pytest.mark.parametrize(
    "rel",
    ["bad/empty.jpg", "bad/truncated.jpg", "bad/random.jpg", "bad/text.png", "bad/page.jpg", "bad/bomb.png",
     "bad/broken_link.jpg", "bad/self_loop.jpg", "x.jpg", "does/not/exist.jpg"],
)  # fmt: skip
def test_query_with_a_bad_image_is_a_one_line_error(indexed, rel):
    corpus, out, _ = indexed
    r = CliRunner().invoke(main, ["query", str(out), str(corpus.root / rel)])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    "rel", ["odd/elongated_10000x10.png", "odd/needle_100000x2.png", "odd/one_pixel.png", "odd/no_extension"]
)
def test_query_with_odd_good_images(indexed, rel, tmp_path):
    corpus, out, _ = indexed
    query = tmp_path / Path(rel).name  # a copy outside the index: embedded, not looked up
    shutil.copyfile(corpus.root / rel, query)
    r = CliRunner().invoke(main, ["query", str(out), str(query), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["results"]) == 3


def test_non_utf8_names_round_trip(indexed):
    corpus, out, _ = indexed
    rel = f"names/{NON_UTF8_NAME}"
    with open_index(out) as idx:
        item = idx.item(idx.id_for_path(corpus.root / rel))
        assert item.path == rel and item.abspath.read_bytes()[:2] == b"\xff\xd8"
        hits = idx.search(item.id, k=len(idx) - 1)
        assert rel not in {h.path for h in hits}  # the query item itself is excluded
    db = sqlite3.connect(out / read_manifest(out).metadata_file)
    (stored,) = db.execute("SELECT path FROM photos WHERE path = ?", (os.fsencode(rel),)).fetchone()
    db.close()
    assert stored == os.fsencode(rel)  # the exact bytes, as a BLOB
    # the CLI prints it as its original bytes; JSON escapes it
    r = _cli("query", str(out), str(corpus.root / rel), "-k", "50")
    assert r.returncode == 0 and r.stderr == b""
    r = _cli("query", str(out), str(corpus.root / "good_0.jpg"), "-k", "50", "--json")
    assert r.returncode == 0
    assert rel in {h["path"] for h in json.loads(r.stdout)["results"]}


def test_exif_rotated_image_is_embedded_upright(indexed, ckpt):
    corpus, out, _ = indexed
    upright = asymmetric()
    loaded = load_image(corpus.root / "odd/exif_rotated.jpg")
    assert loaded.size == upright.size
    diff = np.abs(np.asarray(loaded, np.float32) - np.asarray(upright, np.float32)).mean()
    assert diff < 8, diff  # JPEG noise only; sideways it would not even have the same shape
    with open_index(out, backbone=str(ckpt)) as idx:
        v = idx.vector(idx.id_for_path("odd/exif_rotated.jpg"))
        up, sideways, flipped = idx.embed([upright, upright.transpose(Image.Transpose.ROTATE_90), upright.rotate(180)])
    print(f"\ncosine to upright {v @ up:.4f}, sideways {v @ sideways:.4f}, upside down {v @ flipped:.4f}")
    assert v @ up > 0.9
    assert v @ up > v @ sideways + 0.05 and v @ up > v @ flipped + 0.05


def test_animated_gif_uses_the_first_frame(indexed):
    corpus, _, _ = indexed
    img = load_image(corpus.root / "odd/animated.gif")
    assert img.getpixel((5, 5)) == (255, 0, 0)


def test_decompression_bomb_is_refused_before_decoding_with_bounded_memory(indexed, tmp_path):
    corpus, _, _ = indexed
    bomb = corpus.root / "bad/bomb.png"
    assert bomb.stat().st_size < 200_000
    code = (
        "import sys\n"
        "from simsearch.images import load_image\n"
        "from simsearch.errors import ImageError\n"
        "for limit in (None, 100_000_000, 1_000_000):\n"
        "    try:\n"
        "        load_image(sys.argv[1], **({} if limit is None else {'max_pixels': limit}))\n"
        "        print('DECODED')\n"
        "    except ImageError as e:\n"
        "        print(e)\n"
        "print([ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    *messages, peak_kb = r.stdout.strip().splitlines()  # peak resident memory of that process
    assert len(messages) == 3 and all("pixel limit" in m for m in messages), messages
    assert int(peak_kb) < 300_000, f"{int(peak_kb) // 1024} MB: the bomb was decoded"


def test_max_pixels_is_configurable_and_raising_it_retries_skipped_files(tmp_path, ckpt):
    root = tmp_path / "photos"
    root.mkdir()
    pattern(1, (64, 48)).save(root / "big.jpg")
    pattern(2, (20, 20)).save(root / "small.jpg")
    out = tmp_path / "idx"
    r1 = build_index([root], out, backbone=str(ckpt), max_pixels=1000)
    assert [os.path.basename(p) for p, _ in r1.skipped] == ["big.jpg"] and "pixel limit" in r1.skipped[0][1]
    assert r1.count == 1
    r2 = build_index([root], out, max_pixels=1000)  # unchanged file, same limit: still skipped, not embedded
    assert r2.embedded == 0 and len(r2.skipped) == 1
    r3 = build_index([root], out)  # default limit: the file is retried and indexed
    assert r3.added == 1 and r3.skipped == [] and r3.count == 2
    assert read_manifest(out).skipped == 0 and "big.jpg" not in (out / "skipped.csv").read_text()


def test_follow_symlinks_stays_inside_the_root(indexed, tmp_path):
    corpus, out, _ = indexed
    copy = tmp_path / "idx"
    shutil.copytree(out, copy)
    report = build_index([corpus.root], copy, follow_symlinks=True)
    reasons = {os.path.relpath(p, corpus.root): why for p, why in report.skipped}
    assert report.added == 1 + len(_readable_now(corpus))  # bad/alias.jpg -> ../good_0.jpg, inside the root
    with open_index(copy) as idx:
        paths = {it.path for it in idx.items()}
        assert "bad/alias.jpg" in paths
        assert not any("outside" in p or "secret" in p for p in paths)
        assert all(Path(it.abspath).resolve().is_relative_to(corpus.root.resolve()) for it in idx.items())
    assert "outside" in reasons["bad/to_outside.jpg"] and "outside" in reasons["bad/outside_dir"]
    assert "loop" in reasons["sub/loop_up"] and "loop" in reasons["bad/self_loop.jpg"]
    assert "bad/alias.jpg" not in reasons
