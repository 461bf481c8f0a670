"""scripts/bench_serve.py end to end, briefly: starts `simsearch serve` on loopback, drives it, stops it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE

pytest.importorskip("fastapi")


@pytest.mark.slow
def test_bench_serve_runs_and_reports(tmp_path, real_backbone):
    from simsearch.index import build_index

    build_index([SAMPLE / "flowers", SAMPLE / "animals"], tmp_path / "index", backbone=real_backbone)
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_serve.py"), str(tmp_path / "index"), "--clients", "2",
         "--seconds", "1", "--warmup", "2", "--modes", "vector,similar,upload", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    for mode in ("vector", "similar", "upload"):
        m = out[mode]
        assert m["requests"] > 0 and m["errors"] == 0, m
        assert 0 < m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"] <= m["max_ms"]
    assert out["embedding_ceiling_img_s"] > 0
