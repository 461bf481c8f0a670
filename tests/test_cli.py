"""The command line, through click's CliRunner: every command with and without --json, and user errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from click.testing import CliRunner
from conftest import LAYOUT as IMAGES_WITH_PUPPIES
from conftest import TINY, copy_file, write_bad_image, write_image

from simsearch.cli import main
from simsearch.index import MANIFEST, read_manifest

LAYOUT = {rel: seed for rel, seed in IMAGES_WITH_PUPPIES.items() if "/puppies/" not in rel}  # 7 images


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI points the simsearch logger at the runner's stderr; put it back for the other tests."""
    log = logging.getLogger("simsearch")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert "Traceback" not in result.output
    return result


def run_json(*args):
    result = run(*args, "--json")
    return json.loads(result.stdout)  # raises unless stdout is exactly one JSON document


def assert_user_error(result, *fragments):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no uncaught exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for f in fragments:
        assert f in lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, _register_tiny_backbone):
    base = tmp_path_factory.mktemp("cli")
    root = base / "photos"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed)
    out = base / "idx"
    log = logging.getLogger("simsearch")
    saved = (log.handlers[:], log.level, log.propagate)
    data = run_json("index", root, "--out", out, "--backbone", TINY, "--batch-size", 4, "-q")
    log.handlers[:], log.level, log.propagate = saved
    assert data["added"] == 7
    return {"root": root, "out": out, "base": base}


# ----------------------------------------------------------------------------- index


def test_index_text_and_rerun(tmp_path):
    root = tmp_path / "pics"
    for rel, seed in LAYOUT.items():
        write_image(root / rel, seed)
    write_bad_image(root / "cats" / "broken.jpg")
    out = tmp_path / "idx"
    r = run("index", root, "--out", out, "--backbone", TINY, "-q")
    assert f"{out}: 7 items; 7 added, 0 updated, 0 removed, 0 unchanged, 1 skipped" in r.stdout
    assert f"skipped files and reasons: {out}/skipped.csv" in r.stdout
    assert (out / MANIFEST).exists() and read_manifest(out).count == 7
    (root / "dogs" / "d1.jpg").unlink()
    r = run("index", root, "--out", out, "-q")  # the index's own backbone is reused
    assert "6 unchanged" in r.stdout and "0 added" in r.stdout
    assert "1 indexed files no longer exist: re-run with --prune" in r.stdout
    r = run("index", root, "--out", out, "--prune", "-q")
    assert "6 items" in r.stdout and "1 removed" in r.stdout


def test_index_json_is_one_document_on_stdout(tmp_path):
    root = tmp_path / "pics"
    write_image(root / "a" / "x.jpg", 1)
    write_image(root / "b" / "y.jpg", 2)
    write_bad_image(root / "b" / "bad.png")
    result = run("index", root, "--out", tmp_path / "idx", "--backbone", TINY, "--json")  # not quiet: logs on stderr
    data = json.loads(result.stdout)
    assert (data["added"], data["count"], data["embedded"], data["scanned"]) == (2, 2, 2, 3)
    assert [s["path"] for s in data["skipped"]] == [str((root / "b" / "bad.png").resolve())]
    assert data["path"] == str(tmp_path / "idx")
    assert "bad.png" in result.stderr  # the warning went to stderr, not into the JSON


def test_index_with_hnsw_factory(tmp_path):
    root = tmp_path / "pics"
    for i in range(5):
        write_image(root / "x" / f"{i}.jpg", i)
    data = run_json("index", root, "--out", tmp_path / "idx", "--backbone", TINY, "--index", "HNSW16", "-q")
    assert data["count"] == 5
    assert run_json("info", tmp_path / "idx")["index_factory"] == "IDMap2,HNSW16"
    assert run_json("query", tmp_path / "idx", "--id", 0, "-k", 2)["results"][0]["id"] != 0


# ----------------------------------------------------------------------------- read commands


def test_info(cli_index):
    out = cli_index["out"]
    data = run_json("info", out)
    assert (data["count"], data["labels"], data["backbone"], data["dim"]) == (7, 3, TINY, 256)
    assert data["roots"] == [str(cli_index["root"].resolve())]
    text = run("info", out).stdout
    assert "count: 7" in text and f"backbone: {TINY}" in text and "preprocessing:" in text


def test_query_by_image_and_id(cli_index):
    out, root = cli_index["out"], cli_index["root"]
    query = copy_file(root / "cats" / "c2.jpg", cli_index["base"] / "query.jpg")
    data = run_json("query", out, query, "-k", 3)
    assert data["k"] == 3 and data["query"]["images"] == [str(query)]
    hits = data["results"]
    assert len(hits) == 3 and hits[0]["path"] == "cats/c2.jpg" and hits[0]["score"] > 0.999
    assert [h["rank"] for h in hits] == [1, 2, 3]
    c2 = hits[0]["id"]
    by_id = run_json("query", out, "--id", c2, "-k", 20)["results"]
    assert len(by_id) == 6 and c2 not in {h["id"] for h in by_id}
    text = run("query", out, "--id", c2, "-k", 2).stdout.splitlines()
    assert text[0].split() == ["rank", "score", "id", "label", "path"] and len(text) == 3
    # indexed path as the query: itself excluded
    by_path = run_json("query", out, root / "cats" / "c2.jpg", "-k", 20)["results"]
    assert [h["id"] for h in by_path] == [h["id"] for h in by_id]
    # filters
    cats = run_json("query", out, "--id", c2, "--label", "cats")["results"]
    assert {h["path"] for h in cats} == {"cats/c1.jpg", "cats/c3.png"}
    dogs = run_json("query", out, "--id", c2, "--path-prefix", "dogs/")["results"]
    assert {h["path"] for h in dogs} == {"dogs/d1.jpg", "dogs/d2.png"}
    assert run("query", out, "--id", c2, "--label", "nothing").stdout.strip() == "no results"


def test_recommend(cli_index):
    out = cli_index["out"]
    data = run_json("recommend", out, "-p", 0, "-p", 1, "-n", 2, "-x", 3, "-k", 50)
    assert {h["id"] for h in data["results"]} == {4, 5, 6}
    text = run("recommend", out, "-p", 0, "-k", 1).stdout
    assert "rank" in text and len(text.strip().splitlines()) == 2
    by_path = run_json("recommend", out, "-p", cli_index["root"] / "cats" / "c1.jpg", "-k", 50)["results"]
    assert len(by_path) == 6


def test_evaluate(cli_index, tmp_path):
    out, root = cli_index["out"], cli_index["root"]
    data = run_json("evaluate", out)
    assert (data["items"], data["classes"], data["split"]) == (7, 3, "all")
    assert 0.0 <= data["recall@1"] <= data["recall@5"] <= 1.0 and 0 <= data["map@r"] <= 1
    text = run("evaluate", out).stdout
    assert text.startswith("7 items in 3 classes (all)") and "recall@1" in text and "map@r" in text
    excluded = run_json("evaluate", out, "--exclude-label", "birds")
    assert (excluded["items"], excluded["classes"], excluded["excluded_labels"]) == (5, 2, ["birds"])
    half = run_json("evaluate", out, "--classes", "second-half")  # birds | cats, dogs
    assert (half["items"], half["classes"]) == (5, 2)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label\n"
        + "".join(f"{root / rel},{'pets' if rel.startswith(('cats', 'dogs')) else 'wild'}\n" for rel in LAYOUT)
    )
    relabelled = run_json("evaluate", out, "--labels", csv)
    assert (relabelled["items"], relabelled["classes"], relabelled["unlabelled"]) == (7, 2, 0)


def test_verify(cli_index, tmp_path):
    data = run_json("verify", cli_index["out"])
    assert data["ok"] is True and (data["count"], data["vectors"]) == (7, 7)
    assert run("verify", cli_index["out"]).stdout.strip().endswith("ok (7 items)")
    broken = tmp_path / "broken"
    shutil.copytree(cli_index["out"], broken)
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["count"] = 99
    (broken / MANIFEST).write_text(json.dumps(manifest))
    result = run("verify", broken, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "problem: counts differ" in result.stderr
    assert "1 problem(s) found" in result.stderr


def test_backbones():
    data = run_json("backbones")
    assert data["default"] == "efficientnet_lite0"
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", TINY} <= set(data["backbones"])
    lines = run("backbones").stdout.splitlines()
    assert "efficientnet_lite0 (default)" in lines and TINY in lines


def test_version_and_help():
    assert "simsearch" in run("--version").stdout
    assert "index" in run("--help").stdout


# ----------------------------------------------------------------------------- user errors


def test_user_errors_are_one_line(cli_index, tmp_path):
    out = cli_index["out"]
    assert_user_error(run("query", tmp_path / "no-index", "--id", 0, ok=False), "no index at")
    assert_user_error(run("info", tmp_path / "no-index", ok=False), "no index at")
    assert_user_error(run("evaluate", tmp_path, ok=False), "not a simsearch index")
    assert_user_error(run("query", out, tmp_path / "missing.jpg", ok=False), "query image not found")
    assert_user_error(run("query", out, "--id", 999, ok=False), "no item with id 999")
    assert_user_error(run("query", out, ok=False), "give a query image or --id")
    assert_user_error(run("recommend", out, "-p", 999, ok=False), "no item with id 999")
    bad = write_bad_image(tmp_path / "bad.jpg")
    assert_user_error(run("query", out, bad, ok=False), "not an image")
    assert_user_error(
        run("index", cli_index["root"], "--out", tmp_path / "x", "--backbone", "no_such_net", ok=False),
        "unknown backbone 'no_such_net'",
    )
    assert_user_error(run("index", tmp_path / "nowhere", "--out", tmp_path / "y", ok=False), "folder not found")
    assert_user_error(
        run("index", cli_index["root"], "--out", tmp_path / "z", "--backbone", TINY, "--index", "Bogus9", ok=False),
        "invalid FAISS factory string",
    )
    assert_user_error(
        run("index", cli_index["root"], "--out", tmp_path / "w", "--backbone", tmp_path / "missing.pth", ok=False),
        "checkpoint not found",
    )
    assert_user_error(run("evaluate", out, "--labels", tmp_path / "none.csv", ok=False), "cannot read labels file")


def test_user_errors_with_json_still_go_to_stderr(cli_index, tmp_path):
    assert_user_error(run("query", cli_index["out"], "--id", 999, "--json", ok=False), "no item with id 999")


def test_mismatched_backbone_and_damaged_index(cli_index, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(cli_index["out"], damaged)
    manifest = json.loads((damaged / MANIFEST).read_text())
    manifest["format_version"] = 99
    (damaged / MANIFEST).write_text(json.dumps(manifest))
    assert_user_error(run("query", damaged, "--id", 0, ok=False), "format version 99")
    assert_user_error(
        run("index", cli_index["root"], "--out", cli_index["out"], "--backbone", "efficientnet_lite0", ok=False),
        "built with backbone 'tiny-test'",
    )


def test_usage_errors_exit_2():
    result = CliRunner().invoke(main, ["query"])
    assert result.exit_code == 2 and "Usage" in result.output and "Traceback" not in result.output
