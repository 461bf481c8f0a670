"""Issue 5, hostile input and failing disks: tampered manifests and metadata are refused with a clear error,
nothing is ever unpickled, paths outside the indexed roots are never followed or served, and a disk-full or
permission error while saving leaves the previous index intact and says so.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from badfiles import IS_ROOT, make_tiny_checkpoint, small_jpegs
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.errors import BackboneError, IndexFormatError, SimsearchError
from simsearch.index import MANIFEST, build_index, open_index, read_manifest, verify_index
from simsearch.store import generation as index_mod

SRC = Path(simsearch.__file__).parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def base(tmp_path_factory, ckpt):
    """A small index (8 images) built once; tests work on copies."""
    d = tmp_path_factory.mktemp("hostile")
    small_jpegs(d / "photos", 8)
    build_index([d / "photos"], d / "idx", backbone=str(ckpt), batch_size=4)
    return d


@pytest.fixture
def idx(base, tmp_path) -> Path:
    shutil.copytree(base / "idx", tmp_path / "idx")
    return tmp_path / "idx"


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and p.name != ".lock"}


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


# ----------------------------------------------------------------------------- tampered manifests


def _edit_manifest(path: Path, **changes) -> None:
    m = json.loads((path / MANIFEST).read_text())
    m.update(changes)
    (path / MANIFEST).write_text(json.dumps(m))


TAMPERS = {
    "count": ({"count": 9}, "inconsistent"),
    "dim": ({"dim": 64}, "dim"),
    "format_version": ({"format_version": 99}, "format version"),
    "format_version_text": ({"format_version": "1"}, "format version"),
    "generation_path": ({"generation": "../../../etc/passwd"}, "generation"),
    "generation_missing": ({"generation": 42}, "missing"),
    "generation_negative": ({"generation": -1}, "generation"),
    "relative_root": ({"roots": ["../elsewhere"]}, "roots"),
    "root_not_text": ({"roots": [{"x": 1}]}, "roots"),
    "metric": ({"metric": "l2"}, "metric"),
    "unknown_field": ({"payload": "x"}, "unknown fields"),
    "next_id_text": ({"next_id": "0; DROP TABLE items"}, "next_id"),
    "backbone_not_text": ({"backbone": ["os.system"]}, "backbone"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_manifest_is_refused(idx, name):
    changes, word = TAMPERS[name]
    _edit_manifest(idx, **changes)
    with pytest.raises(IndexFormatError, match=re.escape(word)):
        open_index(idx)
    assert verify_index(idx)[0]
    for args in (["info", str(idx)], ["query", str(idx), "--id", "0"], ["verify", str(idx)]):
        _one_line_error(CliRunner().invoke(main, args))


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00garbage", b'"a string"'])
def test_unreadable_manifest_is_refused(idx, content):
    (idx / MANIFEST).write_bytes(content)
    with pytest.raises(IndexFormatError):
        open_index(idx)
    assert verify_index(idx)[0]
    _one_line_error(CliRunner().invoke(main, ["info", str(idx)]))


def _new_image(base: Path, tmp_path: Path) -> Path:
    """A query image that is not in the index (so it must be embedded)."""
    return shutil.copyfile(base / "photos/d0/img_0000.jpg", tmp_path / "query.jpg")


def test_manifest_of_another_backbone_is_refused(idx, ckpt, base, tmp_path):
    _edit_manifest(idx, weights_sha256="0" * 64)
    with open_index(idx) as index:  # searching by id needs no backbone
        assert index.search(0, k=2)
    err = _one_line_error(CliRunner().invoke(main, ["query", str(idx), str(_new_image(base, tmp_path)), "-k", "2"]))
    assert "built with backbone" in err
    err = _one_line_error(
        CliRunner().invoke(main, ["index", str(base / "photos"), "--out", str(idx), "--backbone", str(ckpt)])
    )
    assert "built with backbone" in err


def test_changed_preprocessing_is_refused(idx, base, tmp_path):
    m = json.loads((idx / MANIFEST).read_text())
    m["preprocessing"]["input_size"] = [3, 96, 96]
    (idx / MANIFEST).write_text(json.dumps(m))
    err = _one_line_error(CliRunner().invoke(main, ["query", str(idx), str(_new_image(base, tmp_path))]))
    assert "preprocessing" in err


# ----------------------------------------------------------------------------- tampered data files


def test_item_paths_leading_out_of_the_root_are_refused(idx):
    m = read_manifest(idx)
    db = sqlite3.connect(idx / m.metadata_file)
    db.execute("UPDATE photos SET path = '../../../../etc/passwd' WHERE id = 1")
    db.commit()
    db.close()
    problems, _ = verify_index(idx)
    assert any("lead out of their root" in p for p in problems)
    with open_index(idx) as index:
        with pytest.raises(IndexFormatError, match="invalid item path"):
            index.item(1)
        with pytest.raises(IndexFormatError):
            index.search(0, k=8)
        assert index.item_file(0).is_file()
    _one_line_error(CliRunner().invoke(main, ["query", str(idx), "--id", "0", "-k", "8"]))


@pytest.mark.parametrize("which", ["vectors", "metadata"])
def test_garbage_data_files_are_refused(idx, which):
    m = read_manifest(idx)
    target = idx / (m.vectors_file if which == "vectors" else m.metadata_file)
    target.write_bytes(b"garbage" * 100)
    with pytest.raises(IndexFormatError):
        open_index(idx)
    assert verify_index(idx)[0]
    _one_line_error(CliRunner().invoke(main, ["info", str(idx)]))
    _one_line_error(CliRunner().invoke(main, ["verify", str(idx)]))


class _Boom:
    """Unpickling this runs code: creates the file named ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_an_index_never_unpickles(idx, tmp_path):
    marker = tmp_path / "pwned"
    m = read_manifest(idx)
    (idx / m.vectors_file).write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(IndexFormatError):
        open_index(idx)
    verify_index(idx)
    assert not marker.exists()


def test_checkpoints_never_unpickle(tmp_path, ckpt):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _Boom(marker)}, evil)
    with pytest.raises(BackboneError, match="cannot read checkpoint"):
        simsearch.create_backbone(str(evil), arch="test_efficientnet")
    folder = tmp_path / "evil_dir"
    folder.mkdir()
    (folder / "backbone.json").write_text(json.dumps({"arch": "test_efficientnet"}))
    shutil.copyfile(evil, folder / "model.pth")
    with pytest.raises(BackboneError):
        simsearch.create_backbone(str(folder))
    assert not marker.exists()
    r = CliRunner().invoke(main, ["index", str(tmp_path), "--out", str(tmp_path / "i"), "--backbone", str(folder)])
    _one_line_error(r)
    assert not marker.exists()


def test_source_never_unpickles():
    """Every torch.load passes weights_only=True; no pickle, no np.load(allow_pickle=True), no eval."""
    import ast

    for py in SRC.rglob("*.py"):
        text = py.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load") and "torch" in text:
                if ast.unparse(node.func) == "load" and "from torch import load" not in text:
                    continue
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{py}:{node.lineno}: {ast.unparse(node)}"
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, flags=re.M), py
        assert "allow_pickle=True" not in text, py
        assert "pickle.load" not in text, py


# ----------------------------------------------------------------------------- symlinks outside the roots


def test_files_replaced_by_links_to_outside_are_not_served(idx, base, tmp_path):
    with open_index(idx) as index:
        item = index.items()[0]
        assert index.item_file(item.id) == item.abspath.resolve()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    victim = tmp_path / "photos"
    shutil.copytree(base / "photos", victim)
    # an index of the copy, then one of its files is swapped for a link to a file outside the root
    out = tmp_path / "idx2"
    build_index([victim], out, backbone=read_manifest(idx).backbone)
    with open_index(out) as index:
        item = index.items()[0]
        item.abspath.unlink()
        item.abspath.symlink_to(secret)
        with pytest.raises(SimsearchError, match="outside the indexed folder"):
            index.item_file(item.id)
    report = build_index([victim], out, prune=True)  # and a re-index drops it, following nothing
    assert report.removed == 1
    assert any("outside" in why for _, why in report.skipped)


# ----------------------------------------------------------------------------- disk full / permission errors


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _own_index(base: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(photos, index) of its own for a test: the 8 images indexed, then 5 new ones added to the folder."""
    photos, idx = tmp_path / "photos", tmp_path / "own-idx"
    shutil.copytree(base / "photos", photos)
    build_index([photos], idx, backbone=read_manifest(base / "idx").backbone, batch_size=4)
    small_jpegs(photos, 5, start_seed=5000, prefix="new")
    return photos, idx


def _faiss_disk_full(*_a, **_k):
    raise RuntimeError(
        "Error in faiss::FileIOWriter::operator()(const void*, size_t, size_t) at impl/io.cpp:98: "
        "Error: 'ret == (nitems)' failed: write error: No space left on device"
    )


def _copy_fails_for_metadata(real):
    def copy(src, dst, *a, **k):
        if Path(dst).name.startswith("meta-"):
            _enospc()
        return real(src, dst, *a, **k)

    return copy


def _manifest_write_fails(real):
    def write(path, *a, **k):
        if Path(path).name == MANIFEST:
            _enospc()
        return real(path, *a, **k)

    return write


FAILURES = {
    "faiss.write_index": lambda mp: mp.setattr("faiss.write_index", _faiss_disk_full),
    "faiss.write_index OSError": lambda mp: mp.setattr("faiss.write_index", _enospc),
    "metadata copy": lambda mp: mp.setattr(index_mod.shutil, "copyfile", _copy_fails_for_metadata(shutil.copyfile)),
    "manifest write": lambda mp: mp.setattr(
        index_mod, "atomic_write_text", _manifest_write_fails(index_mod.atomic_write_text)
    ),
    "fsync": lambda mp: mp.setattr(index_mod, "fsync_file", _enospc),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_disk_full_while_saving_keeps_the_previous_index(base, tmp_path, monkeypatch, failure):
    photos, idx = _own_index(base, tmp_path)
    before = _snapshot(idx)
    with monkeypatch.context() as mp:
        FAILURES[failure](mp)
        with pytest.raises(SimsearchError, match=r"previous version of the index \(8 items\) is intact"):
            build_index([photos], idx, batch_size=4)
        r = CliRunner().invoke(main, ["index", str(photos), "--out", str(idx), "-q"])
    err = _one_line_error(r)
    assert "No space left on device" in err and "intact" in err
    after = _snapshot(idx)
    assert {k: v for k, v in after.items() if k != "skipped.csv"} == {
        k: v for k, v in before.items() if k != "skipped.csv"
    }  # byte for byte, and nothing left behind
    assert verify_index(idx)[0] == []
    report = build_index([photos], idx, batch_size=4)  # once the disk has room again
    assert report.added == 5 and report.count == 13 and verify_index(idx)[0] == []


def _run_limited(cmd: list[str], max_file_bytes: int | None = None, prefix=()) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, preexec_fn=limit, timeout=600)


@pytest.mark.slow
def test_real_write_failure_keeps_the_previous_index(base, tmp_path):
    """A real failing write (file size limit: EFBIG, like a full disk) in a real ``simsearch index`` process."""
    photos, idx = _own_index(base, tmp_path)
    small_jpegs(photos, 200, start_seed=6000, prefix="more")  # enough new vectors to outgrow the current files
    before = _snapshot(idx)
    limit = max(len(v) for v in before.values()) + 4096
    r = _run_limited([sys.executable, "-m", "simsearch.cli", "index", str(photos), "--out", str(idx), "-q"], limit)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "intact" in last and "(8 items)" in last, last
    after = _snapshot(idx)
    assert {k: after[k] for k in before if k != "skipped.csv"} == {k: before[k] for k in before if k != "skipped.csv"}
    assert verify_index(idx)[0] == [] and read_manifest(idx).count == 8


def _unprivileged() -> list[str] | None:
    if not IS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, "--bounding-set", caps, "--inh-caps", caps, "--"]
    return prefix if subprocess.run([*prefix, "true"]).returncode == 0 else None


@pytest.mark.slow
def test_read_only_index_folder_keeps_the_previous_index(base, tmp_path):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: root writes anywhere")
    photos, idx = _own_index(base, tmp_path)
    before = _snapshot(idx)
    os.chmod(idx, 0o555)
    try:
        r = _run_limited([sys.executable, "-m", "simsearch.cli", "index", str(photos), "--out", str(idx), "-q"],
                         prefix=prefix)  # fmt: skip
    finally:
        os.chmod(idx, 0o755)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Permission denied" in last and "intact" in last, last
    assert _snapshot(idx) == before
    assert verify_index(idx)[0] == []
