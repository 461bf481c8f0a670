"""A query's new photo embedded by a forked child process (simsearch.preload_fork, issue 15 start-up).

Each check runs in a fresh interpreter (a process may fork only before numpy or a thread exists): the command's
output with the child is byte for byte that without it, on real photos; a photo the child cannot embed gives the
command's usual error; the child is reaped, leaves no descriptor open, stops when its vector is not needed and
dies with its parent. Speed is measured by ``scripts/bench_startup.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, write_bad_image
from PIL import Image

import simsearch
from simsearch import engines, preload_fork
from simsearch.config import STARTUP

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and engines.openvino_available()
pytestmark = [
    pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed or sees no CPU"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child is forked on Linux only"),
]

# the CLI with fork_query_model set to MODE; reports whether a child was forked and whether its vector was used
CLI = """
import dataclasses, json, sys
from simsearch import preload_fork as pf
pf.STARTUP = dataclasses.replace(pf.STARTUP, fork_query_model=MODE)
fork, vectors = pf.fork_embedding, pf.ForkedEmbedding.vectors
def forking(*args):
    child = fork(*args)
    print("FORKED " + json.dumps(child is not None), file=sys.stderr)
    return child
def taking(self, *args):
    made = vectors(self, *args)
    print("USED " + json.dumps(made is not None), file=sys.stderr)
    return made
pf.fork_embedding, pf.ForkedEmbedding.vectors = forking, taking
from simsearch.cli import main
sys.argv[0] = "simsearch"
main()
"""


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )


def query(mode: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = run_python(CLI.replace("MODE", repr(mode)), "query", *args)
    return proc, [line for line in proc.stderr.splitlines() if line.startswith(("FORKED", "USED"))]


def new_photo(src: Path, path: Path, scale: float = 0.8) -> Path:
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.resize((int(im.width * scale), int(im.height * scale))).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def ov_index(real_backbone, tmp_path_factory):
    """An index of the bundled flower photos, default settings (OpenVINO), and its cached model."""
    out = tmp_path_factory.mktemp("fork") / "flowers"
    report = simsearch.build_index([SAMPLE / "flowers"], out, backbone=real_backbone, augment="none").report
    if report.embedding["engine"] != "openvino":
        pytest.skip("the default engine here is not OpenVINO")
    return out


def test_the_forked_child_gives_the_same_results_as_the_thread(ov_index, tmp_path):
    for n, src in enumerate([SAMPLE / "animals" / "dogs_at_window.jpg", *sorted((SAMPLE / "food").glob("*.jpg"))[:1]]):
        image = str(new_photo(src, tmp_path / f"new{n}.jpg"))
        forked, seen = query("always", str(ov_index), image, "-k", "5", "--json")
        assert forked.returncode == 0, forked.stderr
        assert seen == ["FORKED true", "USED true"]  # the child's vector answered the query
        threaded, seen = query("never", str(ov_index), image, "-k", "5", "--json")
        assert threaded.returncode == 0 and seen == ["FORKED false"], threaded.stderr
        assert forked.stdout == threaded.stdout  # byte for byte
        assert len(json.loads(forked.stdout)["results"]) == 5
    # an indexed photo needs no model (the child finds it among the index's folders and stops), the same results
    indexed = str(next((SAMPLE / "flowers").glob("*.jpg")))
    proc, seen = query("always", str(ov_index), indexed, "-k", "2", "--json")
    assert proc.returncode == 0 and "USED true" not in seen
    assert proc.stdout == query("never", str(ov_index), indexed, "-k", "2", "--json")[0].stdout
    # two photos: no child (a thread loads the model)
    proc, seen = query("always", str(ov_index), image, image, "-k", "2")
    assert proc.returncode == 0 and seen == []


def test_a_photo_the_child_cannot_embed_gives_the_usual_error(ov_index, tmp_path):
    bad = str(write_bad_image(tmp_path / "broken.jpg"))
    forked, seen = query("always", str(ov_index), bad, "-k", "3")
    threaded, _ = query("never", str(ov_index), bad, "-k", "3")
    assert seen == ["FORKED true", "USED false"]  # the child made nothing: the command embedded it itself
    assert forked.returncode == threaded.returncode == 1
    errors = [line for line in forked.stderr.splitlines() if line.startswith("Error")]
    assert errors and errors == [line for line in threaded.stderr.splitlines() if line.startswith("Error")]
    assert "broken.jpg" in errors[0] and "Traceback" not in forked.stderr


# forks a child for the photo, then: takes its vector ("take") or not ("leave"); prints what it sees
LIFECYCLE = """
import dataclasses, json, os, sys
from simsearch import preload_fork as pf
pf.STARTUP = dataclasses.replace(pf.STARTUP, fork_query_model="always")
index, image, what = sys.argv[1:]
fds = sorted(os.listdir("/proc/self/fd"))
child = pf.fork_embedding(index, image, {})
assert child is not None
out = {"pid": child.pid, "during": len(os.listdir("/proc/self/fd")) - len(fds)}
if what == "take":
    child2 = pf.fork_embedding(index, image, {})  # before numpy is loaded
    from simsearch.store.manifest import read_manifest
    from pathlib import Path
    m = read_manifest(Path(index))
    out["other_options"] = child.vectors(m, {"x": 1}, [image]) is None  # made with other options: not taken
    made = child2.vectors(m, {}, [image])
    out["shape"] = list(made.shape)
    out["norm"] = float((made ** 2).sum())
    out["again"] = child2.vectors(m, {}, [image]) is None  # taken once
    child2.close()
    try:
        os.waitpid(child2.pid, os.WNOHANG)
        out["reaped"] = False
    except ChildProcessError:
        out["reaped"] = True
child.close()
child.close()  # idempotent
try:
    os.waitpid(child.pid, os.WNOHANG)
    out["closed_reaped"] = False
except ChildProcessError:
    out["closed_reaped"] = True
out["fds_left"] = sorted(os.listdir("/proc/self/fd")) != fds
print(json.dumps(out))
"""


def test_the_child_is_reaped_and_leaves_no_descriptor_open(ov_index, tmp_path):
    image = str(new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg"))
    for what in ("take", "leave"):
        proc = run_python(LIFECYCLE, str(ov_index), image, what)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["during"] == 1  # the pipe's read end (per child)
        assert out["closed_reaped"] and not out["fds_left"]
        assert not Path(f"/proc/{out['pid']}").exists()
        if what == "take":
            assert out["other_options"] and out["again"] and out["reaped"]
            assert out["shape"][0] == 1 and abs(out["norm"] - 1) < 1e-4


# forks a child for the photo, prints its pid and waits to be killed
ORPHAN = """
import dataclasses, os, sys, time
from simsearch import preload_fork as pf
pf.STARTUP = dataclasses.replace(pf.STARTUP, fork_query_model="always")
child = pf.fork_embedding(sys.argv[1], sys.argv[2], {})
print(child.pid, flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_child_whose_parent_is_killed_stops(ov_index, tmp_path):
    image = str(new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(ov_index), image], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert running(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20  # at most its bounded work (one compile and one photo), usually at once
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(pid)


def test_fork_modes_and_when_a_process_may_fork(monkeypatch, tmp_path):
    assert STARTUP.fork_query_model in preload_fork.FORK_MODES
    # this process has numpy and threads: it never forks, whatever the mode
    monkeypatch.setattr(preload_fork, "STARTUP", STARTUP.__class__(fork_query_model="always"))
    assert not preload_fork.can_fork()
    assert preload_fork.fork_embedding(tmp_path, tmp_path / "missing.jpg", {}) is None
    monkeypatch.setattr(preload_fork, "STARTUP", STARTUP.__class__(fork_query_model="sometimes"))
    with pytest.raises(ValueError, match="fork_query_model"):
        preload_fork.can_fork()
    # "idle": a snapshot of the running tasks against the usable CPUs
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(preload_fork, "LOADAVG", loadavg)
    monkeypatch.setattr(preload_fork, "cpu_count", lambda: 2)
    for text, idle in (("0.5 0.4 0.3 1/200 99", True), ("1.5 1.4 1.3 2/200 99", False), ("garbled", False)):
        loadavg.write_text(text)
        assert preload_fork.cpu_idle() is idle
    loadavg.unlink()
    assert not preload_fork.cpu_idle()
