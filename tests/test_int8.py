"""int8 (OpenVINO + NNCF post-training quantisation): the cached quantised model, no mixing of precisions in one
index, ``--precision auto``'s measured choice and its fallback, the CLI. All on the tiny random-weight backbone
and the bundled sample photos (quantising it takes seconds)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE, TINY

import simsearch
from simsearch.cli import main
from simsearch.config.embedding import Int8Spec
from simsearch.embed import embedder_for_index
from simsearch.engines import auto_precision, int8, openvino_available
from simsearch.engines.openvino import OpenVINOEngine
from simsearch.errors import SimsearchError
from simsearch.index import MANIFEST

pytest.importorskip("nncf")
pytestmark = pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")

PHOTOS = [p for p, _ in int8.sample_photos()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One fresh model cache for this module (the first test quantises, later ones reuse)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("int8-cache")
    mp.setenv("SIMSEARCH_CACHE_DIR", str(path))
    yield path
    mp.undo()


def embed(engine, backbone, photos=PHOTOS[:8]) -> np.ndarray:
    return auto_precision.embed_check_set(engine, backbone, photos)


def test_quantised_model_round_trips_through_the_cache(tiny_backbone, cache, monkeypatch):
    cal = int8.calibration_set([])  # a tiny collection: the bundled sample photos
    assert cal.source == "sample" and len(cal.paths) == len(PHOTOS) > 30
    first = OpenVINOEngine(tiny_backbone, "int8", calibration=cal)
    assert first.precision == "int8" and first.settings() == {"engine": "openvino", "precision": "int8"}
    record = first.calibration
    assert record["count"] == len(PHOTOS) and record["source"] == "sample" and len(record["digest"]) == 64
    entries = list(cache.glob("openvino/*/int8-*/model.xml"))
    assert len(entries) == 1 and json.loads((entries[0].parent / "meta.json").read_text())["digest"] == record["digest"]
    v1 = embed(first, tiny_backbone)
    fp32 = embed(OpenVINOEngine(tiny_backbone, "fp32"), tiny_backbone)
    cos = np.sum(v1 * fp32, axis=1)
    assert np.all(cos > 0.5) and not np.allclose(v1, fp32, atol=1e-4)  # close to fp32, but not fp32

    def no_quantising(*a, **k):
        raise AssertionError("quantised again instead of loading the cached model")

    def no_decoding(*a, **k):
        raise AssertionError("decoded the calibration photos although their model is cached")

    monkeypatch.setattr(int8, "quantize", no_quantising)
    monkeypatch.setattr(int8, "calibration_inputs", no_decoding)  # the digest is of the files: no decoding
    for again in (record, int8.calibration_set([])):  # by the recorded digest, and by the same photos
        second = OpenVINOEngine(tiny_backbone, "int8", calibration=again)
        assert second.calibration == record
        np.testing.assert_allclose(embed(second, tiny_backbone), v1, atol=1e-6)
    # the digest names the photos and how they become inputs: another photo, or full decoding, is another model
    digest = int8.calibration_digest
    assert digest(tiny_backbone, cal) == record["digest"]
    assert digest(tiny_backbone, int8.CalibrationSet(cal.paths[:-1] + cal.paths[:1], "sample")) != record["digest"]
    assert digest(tiny_backbone, int8.CalibrationSet(cal.paths, "sample", draft=False)) != record["digest"]
    other = {**record, "digest": "0" * 64, "source": "collection"}
    with pytest.raises(SimsearchError, match="not in this machine's model cache"):
        OpenVINOEngine(tiny_backbone, "int8", calibration=other)


def test_a_sample_calibration_missing_from_the_cache_is_quantised_again_under_its_recorded_digest(tiny_backbone, cache):
    recorded = {"digest": "1" * 64, "count": len(PHOTOS), "source": "sample"}  # e.g. an older way of naming it
    again = OpenVINOEngine(tiny_backbone, "int8", calibration=recorded)
    assert again.calibration == recorded  # the index's record stays valid
    metas = [json.loads(p.read_text()) for p in cache.glob("openvino/*/int8-*/meta.json")]
    assert recorded["digest"] in [m["digest"] for m in metas]
    same_photos = OpenVINOEngine(tiny_backbone, "int8", calibration=int8.calibration_set([]))
    assert same_photos.calibration["digest"] != recorded["digest"]
    np.testing.assert_allclose(embed(again, tiny_backbone), embed(same_photos, tiny_backbone), atol=1e-5)


def test_int8_index_refuses_other_precisions(tiny_backbone, cache, tmp_path):
    out = tmp_path / "idx"
    with simsearch.build_index(
        [SAMPLE / "flowers", SAMPLE / "animals"], out, backbone=tiny_backbone, precision="int8"
    ) as b:
        report = b.report
    rec = json.loads((out / MANIFEST).read_text())["extra"]["embedding"]
    assert rec["precision"] == "int8" and rec["engine"] == "openvino" and report.embedding == rec
    assert rec["calibration"]["source"] == "sample"  # 11 photos: too few to calibrate on
    assert "reason" not in rec  # asked for, not chosen by auto
    files = sorted((SAMPLE / "flowers").glob("*.jpg"))
    with simsearch.open_index(out) as idx:
        stored = np.vstack([idx.vector(idx.id_for_path(f)) for f in files])
        np.testing.assert_allclose(idx.embed([f.read_bytes() for f in files]), stored, atol=1e-5)
        assert idx.embedder.settings().to_dict() == rec
        extra, count = idx.manifest.extra, idx.manifest.count
    with (
        simsearch.open_index(out, embedder_options={"precision": "fp32"}) as idx,
        pytest.raises(SimsearchError, match="different embeddings"),
    ):
        idx.embed(files[:1])
    fp32_engine = OpenVINOEngine(tiny_backbone, "fp32")
    with pytest.raises(SimsearchError, match=r"int8 and fp32/bf16 vectors .* are different embeddings"):
        embedder_for_index(tiny_backbone, extra, count, engine=fp32_engine)
    with pytest.raises(SimsearchError, match="must not be mixed"):
        embedder_for_index(tiny_backbone, extra, count, engine="ray")
    # and the other way round: an fp32 index refuses int8
    fp32_out = tmp_path / "fp32"
    simsearch.build_index([SAMPLE / "flowers"], fp32_out, backbone=tiny_backbone, precision="fp32").close()
    with pytest.raises(SimsearchError, match="different embeddings"):
        simsearch.build_index([SAMPLE / "animals"], fp32_out, backbone=tiny_backbone, precision="int8")
    m = json.loads((fp32_out / MANIFEST).read_text())
    int8_engine = OpenVINOEngine(tiny_backbone, "int8", calibration=rec["calibration"])
    with pytest.raises(SimsearchError, match="different embeddings"):
        embedder_for_index(tiny_backbone, m["extra"], m["count"], engine=int8_engine)


def test_auto_weighs_int8_with_measurements_and_falls_back_when_the_guard_fails(
    tiny_backbone, cache, tmp_path, monkeypatch
):
    paths = [str(p) for p in PHOTOS]
    monkeypatch.setattr(auto_precision, "_busy", lambda: False)  # keep the timing even on a shared test machine
    lenient = Int8Spec(min_collection=10, auto_min_photos=10, auto_min_speedup=0.01, guard_tolerance=0.99)
    chosen = auto_precision.choose_precision(tiny_backbone, "openvino", paths, spec=lenient)
    assert chosen.precision == "int8" and chosen.engine.precision == "int8" and chosen.calibration is not None
    assert chosen.calibration.source == "collection" and "retrieval guard held" in chosen.reason
    speed = json.loads(next(cache.glob(f"openvino/*/{auto_precision.SPEED_FILE}")).read_text())
    assert len(speed) == 1 and all(v > 0 for v in speed.values())  # the timing, measured once and kept
    # a guard that cannot hold (int8 would have to beat fp32 by 0.99 in R@1 and MAP@R): fp32, saying why
    strict = Int8Spec(min_collection=10, auto_min_photos=10, auto_min_speedup=0.01, guard_tolerance=-0.99)
    monkeypatch.setattr(auto_precision, "INT8", strict)
    out = tmp_path / "auto"
    simsearch.build_index([SAMPLE], out, backbone=tiny_backbone).close()
    rec = json.loads((out / MANIFEST).read_text())["extra"]["embedding"]
    assert rec["precision"] == "fp32" and "calibration" not in rec
    assert "failed the retrieval guard" in rec["reason"] and "MAP@R" in rec["reason"]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "failed the retrieval guard" in info.output
    # too few photos for int8 to pay: the usual choice, and why
    monkeypatch.setattr(auto_precision, "INT8", Int8Spec())
    small = tmp_path / "small"
    simsearch.build_index([SAMPLE / "plants"], small, backbone=tiny_backbone).close()
    rec = json.loads((small / MANIFEST).read_text())["extra"]["embedding"]
    assert rec["precision"] in ("fp32", "bf16") and "photos to embed" in rec["reason"]


def test_cli_index_with_int8(cache, tmp_path):
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        main, ["index", str(SAMPLE), "--out", str(out), "--backbone", TINY, "--precision", "int8", "--json"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # NNCF's progress output kept out of the JSON
    assert report["embedding"]["precision"] == "int8" and report["count"] == len(PHOTOS)
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "openvino int8" in info.output and "int8 calibration" in info.output
    q = CliRunner().invoke(main, ["query", str(out), str(PHOTOS[0]), "-k", "3", "--json"])
    assert q.exit_code == 0, q.output
    new = tmp_path / "more"
    new.mkdir()
    shutil.copy(PHOTOS[0], new / "copy.jpg")
    r = CliRunner().invoke(main, ["index", str(new), "--out", str(out), "--precision", "fp32"])
    assert r.exit_code != 0 and "different embeddings" in r.output
    r = CliRunner().invoke(main, ["index", str(new), "--out", str(out), "--json"])  # auto: the index's own int8
    assert r.exit_code == 0 and json.loads(r.stdout)["embedding"] == report["embedding"]
