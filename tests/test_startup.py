"""Query start-up (issue 15): what makes ``simsearch query`` of a new image start fast, checked without timing.

A fresh ``simsearch query`` process on an OpenVINO index imports neither torch/timm nor OpenVINO's conversion API
nor the build, server or fine-tuning code, and its vectors are those of the torch-preprocessed reference path.
The speed itself is measured by ``scripts/bench_startup.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import CALTECH, REPO, SAMPLE
from PIL import Image

import simsearch
from simsearch import engines, preload
from simsearch.cli.query_options import embedder_options, warm_up
from simsearch.config import STARTUP
from simsearch.config.startup import THREAD_VARIABLES
from simsearch.embed import cached_embedder_for_index
from simsearch.engines import create_engine
from simsearch.errors import BackboneError
from simsearch.preload import preload_embedder, take_preload
from simsearch.system import package_version

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and engines.openvino_available()
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed or sees no CPU")

# never needed to query an index with a new image (the OpenVINO model being cached): the query opens the facade's
# reading part (simsearch.index_reader), without the build and vote code the full facade imports
NOT_ON_THE_QUERY_PATH = [
    "simsearch.index",
    "simsearch.build",
    "simsearch.sync",
    "simsearch.sources",
    "simsearch.autocandidates",
    "simsearch.augment_index",
    "simsearch.verify",
    "simsearch.votes",
    "torch",
    "timm",
    "torchvision",
    "openvino.tools.ovc",
    "faiss.contrib",
    "simsearch.finetuning",
    "simsearch.evaluate",
    "simsearch.server",
    "simsearch.classify",
    "simsearch.cli.indexing",
    "simsearch.cli.serving",
    "simsearch.gallery",  # --html only
]

# runs the `simsearch` console script's entry point, then reports the modules the process imported
CLI_REPORTING_MODULES = """
import json, sys
from simsearch.cli import main
sys.argv[0] = "simsearch"
try:
    main()
finally:
    print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def run_python(code: str, *args: str, threads: str | None = None) -> subprocess.CompletedProcess:
    """``python -c code args`` on this tree; the environment's BLAS and OpenMP threads replaced by ``threads``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for variable in THREAD_VARIABLES:
        env.pop(variable, None)
        if threads is not None:
            env[variable] = threads
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


def new_photo(src, path, scale: float = 0.8):
    """A photo that is not in the index: a resized copy of ``src``."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.resize((int(im.width * scale), int(im.height * scale))).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def ov_index(real_backbone, tmp_path_factory):
    """An index of the bundled flower photos built with the default settings (OpenVINO where installed)."""
    out = tmp_path_factory.mktemp("startup") / "flowers"
    report = simsearch.build_index([SAMPLE / "flowers"], out, backbone=real_backbone, augment="none").report
    if report.embedding["engine"] != "openvino":
        pytest.skip("the default engine here is not OpenVINO")
    return out


@needs_openvino
def test_a_fresh_query_process_loads_only_the_query_code(ov_index, real_backbone, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")
    proc = run_python(CLI_REPORTING_MODULES, "query", str(ov_index), str(image), "-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stderr.split("MODULES ", 1)[1]))
    assert "openvino" in modules and "simsearch.engines.cached" in modules  # it did run the cached model
    assert [m for m in NOT_ON_THE_QUERY_PATH if m in modules] == []
    hits = json.loads(proc.stdout)["results"]
    assert len(hits) == 5
    # the scores are those of the torch reference (timm transform, torch fp32 model) against the stored vectors
    from simsearch.embed import Embedder

    ref = Embedder(real_backbone, engine="torch", precision="fp32", draft=True).embed([image])[0]
    with simsearch.open_index(ov_index) as idx:
        expected = [float(idx.vector(h["id"]) @ ref) for h in hits]
    np.testing.assert_allclose([h["score"] for h in hits], expected, atol=1e-3)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@needs_openvino
def test_torch_free_query_vectors_equal_the_torch_preprocessed_ones(ov_index, real_backbone, tmp_path):
    """On real photos (the bundled ones, and Caltech-101 ones where present: greyscale, odd sizes): the query
    path's vectors (numpy preprocessing, cached OpenVINO model) equal the same engine's on timm's transform, and
    the torch fp32 reference's within float tolerance."""
    photos = sorted(SAMPLE.glob("*/*.jpg"))[::4]
    caltech = CALTECH / "images"
    if caltech.is_dir():
        photos += sorted(p for d in sorted(caltech.iterdir())[:40:5] for p in sorted(d.glob("*.jpg"))[:1])
    with simsearch.open_index(ov_index) as idx:
        # with the engine options `simsearch query` of one image uses (one stream, one thread)
        fast = cached_embedder_for_index(idx.manifest, engine_options={"hint": "latency", "threads": 1})
        assert fast is not None and fast.backbone.model is None  # no torch model behind it
        assert str(fast.engine.compiled.get_property("PERFORMANCE_HINT")).upper().endswith("LATENCY")
        assert type(fast.preprocessor.transform).__name__ == "NumpyTransform"
        got = fast.embed(photos)
    ov_on_timm = create_engine(real_backbone, "openvino", "fp32", 8)
    reference = simsearch.Embedder(real_backbone, engine="torch", precision="fp32", draft=True)
    timm_inputs = [reference.preprocess(p) for p in photos]  # torch tensors from timm's transform
    import torch

    same_engine = ov_on_timm(torch.stack(timm_inputs))
    np.testing.assert_allclose(got, same_engine, atol=1e-5)
    torch_vectors = reference.embed(photos)
    assert float(np.min(np.sum(got * torch_vectors, axis=1))) > 0.9999
    with pytest.raises(BackboneError, match="hint must be throughput or latency"):
        create_engine(real_backbone, "openvino", "fp32", 8, hint="fastest")


def test_importing_simsearch_and_its_cli_loads_no_heavy_or_unneeded_code():
    code = (
        "import json, sys, simsearch, simsearch.cli\n"
        "print(json.dumps(sorted(sys.modules)))\n"
        "import simsearch.search, simsearch.sync\n"
        "assert callable(simsearch.search) and simsearch.search.__module__ == 'simsearch.search'\n"
        "from simsearch import search, recommend, Hit, Rules\n"
        "assert search is simsearch.search and recommend.__module__ == 'simsearch.search' and Hit.__name__ == 'Hit'\n"
        "assert simsearch.UpdateReport is simsearch.sync.UpdateReport and simsearch.open_index.__name__ == 'open_index'\n"
        "from simsearch.index import build_index, verify_index\n"
        "assert build_index.__module__ == 'simsearch.build' and verify_index.__module__ == 'simsearch.verify'\n"
        "assert set(simsearch.__all__) <= set(dir(simsearch))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout))
    heavy = ["torch", "timm", "openvino", "faiss", "nncf", "fastapi", "simsearch.build", "simsearch.index"]
    heavy += ["numpy", "simsearch.search"]  # the CLI sets numpy's BLAS threads before numpy is loaded
    assert [m for m in heavy if m in modules] == []
    assert not [m for m in modules if m.startswith("simsearch.cli.") and m != "simsearch.cli._common"]


def test_every_command_is_in_the_lazy_command_table():
    """`simsearch.cli._common.COMMANDS` names the module of every command (a command missing from it would
    vanish from the CLI, one pointing at the wrong module would fail when run)."""
    import importlib

    from simsearch.cli._common import COMMANDS, main

    for module in sorted(set(COMMANDS.values())):
        importlib.import_module(f"simsearch.cli.{module}")
    registered = {name: cmd.callback.__module__ for name, cmd in main.commands.items()}
    assert registered == {name: f"simsearch.cli.{module}" for name, module in COMMANDS.items()}


@needs_openvino
def test_openvino_runtime_defers_its_conversion_api():
    code = (
        "import sys\n"
        "from simsearch.engines.runtime import import_openvino\n"
        "ov = import_openvino()\n"
        "assert 'openvino.tools.ovc' not in sys.modules, 'imported eagerly'\n"
        "assert 'CPU' in ov.Core().available_devices\n"
        "from openvino.tools.ovc import convert_model\n"
        "assert ov.convert_model is convert_model\n"
        "assert import_openvino() is ov\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


@needs_openvino
def test_a_one_image_model_is_made_once_remade_when_its_source_changes_and_never_trusted_damaged(
    tiny_backbone, tmp_path, monkeypatch
):
    """``static_batch=1`` (what a one-image query asks): a batch-1 copy of the cached IR, with the same vectors."""
    monkeypatch.setenv("SIMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    general = create_engine(tiny_backbone, "openvino", "fp32")

    def one_image_engine():
        return create_engine(tiny_backbone, "openvino", "fp32", hint="latency", threads=1, static_batch=1)

    one = one_image_engine()
    assert one.static_batch == 1 and one.compiled.inputs[0].partial_shape.is_static
    (entry,) = [p.parent for p in (tmp_path / "cache" / "openvino").glob("*/batch-1")]
    copy = entry / "batch-1" / "model.xml"
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(one(x[:1]), general(x[:1]), atol=1e-6)
    made = copy.stat().st_mtime_ns
    assert one_image_engine().static_batch == 1 and copy.stat().st_mtime_ns == made  # reused, not made again
    # another size: the general model from then on, same vectors
    np.testing.assert_allclose(one(x), general(x), atol=1e-6)
    assert one.static_batch is None and not one.compiled.inputs[0].partial_shape.is_static
    np.testing.assert_allclose(one(x[:1]), general(x[:1]), atol=1e-6)
    # the IR it was made from changed (converted again): made again from it
    stat = (entry / "model.xml").stat()
    os.utime(entry / "model.xml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert one_image_engine().static_batch == 1 and copy.stat().st_mtime_ns != made
    # damaged: not used (the general model answers) and removed, so that the next query makes it again
    copy.write_text("<net>damaged")
    damaged = one_image_engine()
    assert damaged.static_batch is None and not copy.exists()
    np.testing.assert_allclose(damaged(x[:1]), general(x[:1]), atol=1e-6)
    assert one_image_engine().static_batch == 1 and copy.exists()


@needs_openvino
def test_a_new_photo_query_loads_the_model_while_the_index_opens(ov_index, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")  # outside the index's folder
    options = {"engine_options": {"hint": "latency", "threads": 1, "static_batch": 1}}
    # first, not beside the load: OpenVINO sets the C locale process-wide while it compiles, and two compiles at
    # once can leave it set (text files opened without an encoding would then be read as ASCII)
    with simsearch.open_index(ov_index) as plain:
        expected = plain.embed([image])
    pending = preload_embedder(ov_index, [image], options)
    assert pending is not None
    with simsearch.open_index(ov_index) as idx:
        idx.embedder_options.update(options)
        idx.adopt_embedder(pending)
        assert idx.embedder is pending.result(idx.manifest, options) and idx.embedder.engine.static_batch == 1
        np.testing.assert_allclose(idx.embed([image]), expected, atol=1e-6)
        # made for another embedding (a new generation with other weights) or other options: not adopted
        other = dataclasses.replace(idx.manifest, weights_sha256="0" * 64)
        assert pending.result(other, options) is None and pending.result(idx.manifest, {}) is None
    # a photo inside the indexed folder may be an indexed one, whose query needs no model: nothing is loaded
    assert preload_embedder(ov_index, [next((SAMPLE / "flowers").glob("*.jpg"))], options) is None
    assert preload_embedder(tmp_path / "no-index", [image], options) is None


@needs_openvino
def test_a_new_photo_is_embedded_beside_the_imports_and_its_vectors_used_only_as_made(ov_index, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")
    options = embedder_options([str(image)])

    def load(images):
        pending = preload_embedder(ov_index, images, options)
        assert pending is not None
        return pending, pending.result(pending.manifest, options)

    pending, embedder = load([image])
    made = pending.embedded(embedder, [str(image)])
    assert made is not None and np.array_equal(made, embedder.embed([image]))  # those of embedding it now
    assert pending.embedded(embedder, [image]) is None  # taken once
    pending, own = load([image])
    assert pending.embedded(own, [image, image]) is None  # other images
    pending, _ = load([image])
    assert pending.embedded(embedder, [image]) is None  # another embedder than the one that made them
    pending, own = load([image])
    new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", image, scale=0.7)  # the file changed since
    assert pending.embedded(own, [image]) is None
    # with an indexed photo among the query's: the model is loaded, the photos are left to the query
    indexed = next((SAMPLE / "flowers").glob("*.jpg"))
    pending, own = load([image, indexed])
    assert pending.embedded(own, [image, indexed]) is None


# runs the CLI, and reports which of these modules were imported when the model's thread started
CLI_REPORTING_PRELOAD_START = """
import json, sys
from simsearch import preload
init = preload.PendingEmbedder.__init__
def reporting(self, *args, **kwargs):
    seen = [m for m in ("faiss", "simsearch.index", "simsearch.cli.querying") if m in sys.modules]
    print("PRELOAD " + json.dumps(seen), file=sys.stderr)
    init(self, *args, **kwargs)
preload.PendingEmbedder.__init__ = reporting
from simsearch.cli import main
sys.argv[0] = "simsearch"
main()
"""


@needs_openvino
def test_a_query_starts_its_model_before_importing_the_query_code(ov_index, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")
    proc = run_python(CLI_REPORTING_PRELOAD_START, "query", str(ov_index), "-k", "3", str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    starts = [json.loads(line.split(" ", 1)[1]) for line in proc.stderr.splitlines() if line.startswith("PRELOAD ")]
    assert starts == [[]]  # once, before FAISS, the index facade and the query command were imported
    assert len(json.loads(proc.stdout)["results"]) == 3
    # an indexed photo needs no model; bad arguments start nothing (the command then says what is wrong)
    indexed = str(next((SAMPLE / "flowers").glob("*.jpg")))
    for args in (["query", str(ov_index), indexed], ["query", str(ov_index), str(image), "-k", "0"]):
        proc = run_python(CLI_REPORTING_PRELOAD_START, *args)
        assert "PRELOAD" not in proc.stderr, args


@needs_openvino
def test_a_load_started_ahead_is_taken_once_by_the_same_arguments(ov_index, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")
    warm_up([str(ov_index), str(image), "--label", "dogs", "-k", "4"])  # what `simsearch query ...` starts
    assert len(preload._STARTED) == 1
    next(iter(preload._STARTED.values())).wait()  # one compile at a time (see the test above)
    options = embedder_options([str(image)])
    assert options["engine_options"]["static_batch"] == 1
    other = take_preload(str(ov_index), [str(image)], {})  # other options: a load of its own
    assert other is not None and other.options == {} and len(preload._STARTED) == 1
    pending = take_preload(str(ov_index), [str(image)], options)
    assert pending is not None and not preload._STARTED
    assert pending.result(pending.manifest, options).engine.static_batch == 1
    other.wait()
    again = take_preload(str(ov_index), [str(image)], options)  # taken once: the next one is a new load
    assert again is not None and again is not pending
    again.wait()


# runs the CLI, and reports the thread settings the process ended with (and FAISS's own count, if loaded)
CLI_REPORTING_BLAS = """
import atexit, os, sys
def report():
    print("BLAS", os.environ.get("OPENBLAS_NUM_THREADS"), file=sys.stderr)
    print("OMP", os.environ.get("OMP_NUM_THREADS"), file=sys.stderr)
    if "faiss" in sys.modules:
        print("FAISS", sys.modules["faiss"].omp_get_max_threads(), file=sys.stderr)
atexit.register(report)
from simsearch.cli import main
sys.argv[0] = "simsearch"
main()
"""


@needs_openvino
def test_quick_commands_run_numpy_and_faiss_on_one_thread_with_the_same_results(ov_index, tmp_path):
    image = new_photo(SAMPLE / "animals" / "dogs_at_window.jpg", tmp_path / "new.jpg")
    query = ["query", str(ov_index), str(image), "-k", "8", "--json"]
    one = STARTUP.threads
    quick = run_python(CLI_REPORTING_BLAS, *query)
    assert quick.returncode == 0, quick.stderr
    assert f"BLAS {one}" in quick.stderr and f"OMP {one}" in quick.stderr and f"FAISS {one}" in quick.stderr
    # the environment's own settings win, and the results are those of the libraries' default threads
    two = run_python(CLI_REPORTING_BLAS, *query, threads="2")
    assert "BLAS 2" in two.stderr and "FAISS 2" in two.stderr
    assert json.loads(two.stdout) == json.loads(quick.stdout)
    recommend = run_python(CLI_REPORTING_BLAS, "recommend", str(ov_index), "-p", "1", "-n", "2", "--json")
    assert recommend.returncode == 0 and f"BLAS {one}" in recommend.stderr
    assert len(json.loads(recommend.stdout)["results"]) > 0
    other = run_python(CLI_REPORTING_BLAS, "info", str(ov_index), "--json")  # any other command: untouched
    assert other.returncode == 0 and "BLAS None" in other.stderr and "OMP None" in other.stderr


def test_package_versions_are_those_of_importlib_metadata():
    for name in ("numpy", "pillow", "Pillow", "faiss-cpu", "click"):
        assert package_version(name) == importlib.metadata.version(name)
    assert package_version("no-such-package-simsearch") is None


def test_a_cli_process_leaves_its_objects_to_the_os_at_exit(tmp_path):
    """No last garbage collections over everything a command loaded (a third of a second under load): frozen."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0))\n"  # runs after the CLI's own
        "from simsearch.cli import main\n"
        "sys.argv[0] = 'simsearch'\n"
        "main()\n"
    )
    proc = run_python(code, "info", str(tmp_path / "no-index"))
    assert proc.returncode == 1 and "no index at" in proc.stderr
    assert "FROZEN True" in proc.stdout
