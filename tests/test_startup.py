"""Query start-up (issue 15): what makes ``simsearch query`` of a new image start fast, checked without timing.

A fresh ``simsearch query`` process on an OpenVINO index imports neither torch/timm nor OpenVINO's conversion API
nor the build, server or fine-tuning code, and its vectors are those of the torch-preprocessed reference path.
The speed itself is measured by ``scripts/bench_startup.py``.
"""

from __future__ import annotations

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
from simsearch import engines
from simsearch.embed import cached_embedder_for_index
from simsearch.engines import create_engine
from simsearch.errors import BackboneError

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and engines.openvino_available()
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed or sees no CPU")

# never needed to query an index with a new image (the OpenVINO model being cached); the build code is imported
# by the Index facade at the top (no function-level imports of simsearch modules), but loads no heavy dependency
NOT_ON_THE_QUERY_PATH = [
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


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
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
        "assert simsearch.UpdateReport is simsearch.sync.UpdateReport and simsearch.open_index.__name__ == 'open_index'\n"
        "from simsearch.index import build_index, verify_index\n"
        "assert build_index.__module__ == 'simsearch.build' and verify_index.__module__ == 'simsearch.verify'\n"
        "assert set(simsearch.__all__) <= set(dir(simsearch))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout))
    heavy = ["torch", "timm", "openvino", "faiss", "nncf", "fastapi", "simsearch.build", "simsearch.index"]
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
