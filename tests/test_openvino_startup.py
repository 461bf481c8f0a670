"""OpenVINO's part of a query's start-up (issue 15): the lazy operation sets, the light engine package and the
one-image model compiled ahead of its engine. Checked without timing (``scripts/bench_startup.py`` measures)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from simsearch import engines
from simsearch.engines import create_engine
from simsearch.engines import openvino as ov_engine

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and engines.openvino_available()
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed or sees no CPU")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


# a fresh process: OpenVINO imported as simsearch does it; the operation sets stand in until used, then work
LAZY_OPSETS = """
import sys
from simsearch.engines.runtime import LazyOpset, import_openvino
ov = import_openvino()
opsets = [m for m in sys.modules if m.startswith("openvino.opset") and m.count(".") == 1]
assert len(opsets) >= 17 and all(isinstance(sys.modules[m], LazyOpset) for m in opsets), opsets
assert not any(m.startswith("openvino.opset") and m.endswith(".ops") for m in sys.modules), "ran eagerly"
import numpy as np
x = ov.opset13.parameter([1, 3], name="x", dtype=np.float32)  # first use: the real module
assert not isinstance(ov.opset13, LazyOpset) and not isinstance(sys.modules["openvino.opset13"], LazyOpset)
import openvino.opset8.ops as ops8  # a submodule, its package still standing in
from openvino import opset1
y = opset1.relu(ops8.adaptive_avg_pool(ov.opset1.reshape(x, [1, 1, 3], False), [1]))
model = ov.Model([y], [x])
out = ov.Core().compile_model(model, "CPU")(np.array([[-1.0, 2.0, 3.0]], np.float32))[0]
assert np.allclose(out, [[[4 / 3]]]), out
import openvino.opset6 as opset6  # still standing in (only its submodule ran): answers with the real one
assert opset6.assign is sys.modules["openvino.opset6"].assign and not isinstance(ov.opset6, LazyOpset)
print("OK")
"""


@needs_openvino
def test_openvino_operation_sets_are_imported_on_first_use_and_then_work():
    proc = run_python(LAZY_OPSETS)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


@needs_openvino
def test_the_openvino_engine_module_loads_no_image_or_other_engine_code():
    code = (
        "import sys\n"
        "from simsearch.engines.openvino import ov_core, precompile\n"
        "from simsearch.engines import cache\n"
        "bad = [m for m in ('PIL', 'torch', 'simsearch.engines.transform', 'simsearch.engines.ray_data',"
        " 'simsearch.engines.int8', 'simsearch.images') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "from simsearch.engines import Preprocessor, create_engine  # the package's names, on first use\n"
        "assert 'simsearch.engines.transform' in sys.modules\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError):
        engines.no_such_name  # noqa: B018


@needs_openvino
def test_a_one_image_model_compiled_ahead_is_taken_by_its_engine_only(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    bb = tiny_backbone
    size = bb.data_config["input_size"]
    assert not ov_engine.precompile(bb.weights_sha256, bb.arch, size, "fp32", static_batch=1)  # nothing cached yet
    plain = create_engine(bb, "openvino", "fp32", hint="latency", threads=1, static_batch=1)  # caches the model
    x = np.random.default_rng(0).standard_normal((1, *size)).astype(np.float32)
    expected = plain(x)
    assert ov_engine.precompile(bb.weights_sha256, bb.arch, size, "fp32", static_batch=1, hint="latency", threads=1)
    assert len(ov_engine._AHEAD) == 1
    ahead = next(iter(ov_engine._AHEAD.values()))
    engine = create_engine(bb, "openvino", "fp32", hint="latency", threads=1, static_batch=1)
    assert not ov_engine._AHEAD and engine._ahead is ahead  # taken, waited for at its first use
    assert np.array_equal(engine(x), expected) and engine.compiled is ahead.result() and engine._ahead is None
    assert engine.static_batch == 1 and engine.precision == plain.precision and engine.requests == plain.requests
    # another configuration (two threads): not taken; that engine compiles its own
    assert ov_engine.precompile(bb.weights_sha256, bb.arch, size, "fp32", static_batch=1, hint="latency", threads=2)
    other = create_engine(bb, "openvino", "fp32", hint="latency", threads=1, static_batch=1)
    assert len(ov_engine._AHEAD) == 1 and other.compiled is not ahead.result()
    ov_engine._AHEAD.clear()
    # int8 is never compiled ahead (its model is the quantised one)
    assert not ov_engine.precompile(bb.weights_sha256, bb.arch, size, "int8", static_batch=1)


@needs_openvino
def test_a_failed_compile_ahead_is_the_engines_own_failure(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    bb = tiny_backbone
    size = bb.data_config["input_size"]
    create_engine(bb, "openvino", "fp32", hint="latency", threads=1, static_batch=1)
    copy = ov_engine.cache.ir_entry(bb.weights_sha256, bb.arch, size) / "batch-1" / "model.xml"
    copy.write_text("<net>damaged")  # the compile ahead fails; the engine handles it as its own compile's failure
    assert ov_engine.precompile(bb.weights_sha256, bb.arch, size, "fp32", static_batch=1, hint="latency", threads=1)
    engine = create_engine(bb, "openvino", "fp32", hint="latency", threads=1, static_batch=1)
    assert engine.precision == "fp32"  # the engine's first use: the compile's failure handled as its own
    assert not ov_engine._AHEAD and engine.static_batch is None and not copy.exists()  # the general model answers
    assert engine(np.zeros((1, *size), np.float32)).shape == (1, bb.dim)
