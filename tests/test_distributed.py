"""`--engine ray`: decoding and embedding as a Ray Data pipeline, on a local Ray instance (skipped without Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_bad_image, write_image

import simsearch
from simsearch.index import build_index, verify_index

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'simsearch[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_engine_gives_the_same_ids_and_vectors_as_the_local_engine(tmp_path, tiny_backbone, local_ray):
    root = tmp_path / "photos"
    for i in range(14):
        write_image(root / f"cls{i % 3}" / f"img{i:02d}.jpg", seed=i, size=(80 + i, 60))
    write_bad_image(root / "cls0" / "broken.jpg")
    local = build_index([root], tmp_path / "local", backbone=tiny_backbone, engine="torch", precision="fp32")
    remote = build_index(
        [root], tmp_path / "ray", backbone=tiny_backbone, engine="ray", batch_size=4, engine_options={"concurrency": 2}
    )
    assert (remote.added, remote.count) == (local.added, local.count) == (14, 14)
    assert [p for p, _ in remote.skipped] == [p for p, _ in local.skipped] == [str(root / "cls0" / "broken.jpg")]
    assert verify_index(tmp_path / "ray")[0] == []
    with simsearch.open_index(tmp_path / "local") as a, simsearch.open_index(tmp_path / "ray") as b:
        assert [(i.id, i.path, i.label) for i in a.items()] == [(i.id, i.path, i.label) for i in b.items()]
        ids_a, va = a.vectors()
        ids_b, vb = b.vectors()
        assert ids_a.tolist() == ids_b.tolist()
        cos = np.sum(va * vb, axis=1)
        assert cos.min() >= 0.9999, cos
        assert b.manifest.extra["embedding"] == {"engine": "torch", "precision": "fp32", "draft": True}
        assert b.manifest.extra["embedding"]["draft"] == a.manifest.extra["embedding"]["draft"]
    # incremental: only the new file goes through Ray
    write_image(root / "cls1" / "new.jpg", seed=99)
    again = build_index([root], tmp_path / "ray", backbone=tiny_backbone, engine="ray", batch_size=4)
    assert (again.added, again.unchanged, again.count) == (1, 14, 15)
