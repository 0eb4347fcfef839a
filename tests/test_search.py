"""Search over a store: near-duplicates and leaks (real Fashion-MNIST and photos with planted duplicates),
the index (exact / faiss, stale refused), query by example, the memory budget, and the command line."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from searchstore import write_synthetic_store

import deepfeat
from deepfeat.cli import main
from deepfeat.errors import StoreError
from deepfeat.search.duplicates import DEFAULT_THRESHOLD, all_pairs, pair_block_rows, partitioned_pairs, plan_partitions
from deepfeat.search.index import build_index, exact_knn, faiss_available, open_index
from deepfeat.search.pixels import DEFAULT_PIXEL_THRESHOLD

SIZE = 64  #: model input size: small and fast


@pytest.fixture(scope="module")
def planted(fm_dir, photo_files, tmp_path_factory):
    """Fashion-MNIST (4 per class and split) and four photos, with planted duplicates; extracted at 64 px fp32.

    Returns (image root, store, {name: (planted path, original path)}).
    """
    root = tmp_path_factory.mktemp("search") / "images"
    shutil.copytree(fm_dir, root, ignore=shutil.ignore_patterns("classes.txt"))
    (root / "train" / "photo").mkdir()
    for key, p in photo_files.items():
        shutil.copyfile(p, root / "train" / "photo" / f"{key}.jpg")
    train = sorted((root / "train").glob("*/*.png"))
    a, b = train[3], train[17]
    photo = root / "train" / "photo"
    dups = {
        "copy_train_to_test": (root / "test" / a.parent.name / "leak_copy.png", a),
        "copy_within_train": (root / "train" / b.parent.name / "twin_copy.png", b),
        "photo_copy_to_test": (root / "test" / "photo_leak" / "coffee_copy.jpg", photo / "coffee.jpg"),
        # photo edits that stay near their original at 64 px (each >= 0.98 here; docs/SEARCH.md has the
        # recall over many photos and edits, and the Fashion-MNIST edits that are not found)
        "photo_jpeg75_to_test": (root / "test" / "photo_leak" / "cat_q75.jpg", photo / "cat.jpg"),
        "photo_down75_within_train": (photo / "astronaut_down75.png", photo / "astronaut.jpg"),
        "photo_down50_to_test": (root / "test" / "photo_leak" / "rocket_down50.png", photo / "rocket.jpg"),
    }
    for dst, src in dups.values():
        dst.parent.mkdir(exist_ok=True)
        if dst.stem.endswith("_q75"):
            Image.open(src).save(dst, quality=75)
        elif "_down" in dst.stem:
            im = Image.open(src)
            f = int(dst.stem.rsplit("down", 1)[1]) / 100
            im.resize((round(im.width * f), round(im.height * f)), Image.BILINEAR).save(dst)
        else:
            shutil.copyfile(src, dst)
    store = root.parent / "store"
    s = deepfeat.extract(root, store, input_size=SIZE, precision="fp32", dtype="float16", workers=1)
    assert s.failed_total == 0
    return root, store, dups


@pytest.fixture(scope="module")
def dup_run(planted, tmp_path_factory):
    root, store, dups = planted
    out = tmp_path_factory.mktemp("dups")
    return deepfeat.duplicates(store, out), out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_planted_duplicates_are_found_at_the_default_threshold(planted, dup_run):
    root, store, dups = planted
    summary, out = dup_run
    pairs = _read_csv(out / "pairs.csv")
    found = {frozenset((r["path_a"], r["path_b"])): float(r["similarity"]) for r in pairs}
    for name, (dst, src) in dups.items():
        key = frozenset((str(dst), str(src)))
        assert key in found, f"{name} not found"
        assert found[key] >= DEFAULT_THRESHOLD
    # every reported pair is a planted one: no two distinct Fashion-MNIST items reach the default threshold
    assert set(found) == {frozenset((str(d), str(s))) for d, s in dups.values()}
    # the four planted into test leak from train; the two within train do not count
    assert summary.leaks == {"test": 4}
    assert summary.pairs == len(pairs) == len(dups)
    assert "near-duplicate pairs" in summary.line() and "4 test" in summary.line()


def test_pairs_and_groups_files(planted, dup_run):
    root, store, dups = planted
    summary, out = dup_run
    pairs = _read_csv(out / "pairs.csv")
    assert list(pairs[0]) == [
        "path_a", "path_b", "id_a", "id_b", "split_a", "split_b", "similarity", "pixel_similarity", "found_by"
    ]  # fmt: skip
    # these planted copies are close by both measures; the pixel correlation is measured for every pair
    assert {r["found_by"] for r in pairs} == {"both"} and all(
        float(r["pixel_similarity"]) >= DEFAULT_PIXEL_THRESHOLD for r in pairs
    )
    cross = [r["split_a"] != r["split_b"] for r in pairs]
    assert cross == sorted(cross, reverse=True)  # cross-split pairs first
    store_ids = set(deepfeat.open_store(store).rows(["id"]).column("id").to_pylist())
    assert all(r["id_a"] in store_ids and r["id_b"] in store_ids for r in pairs)
    groups = _read_csv(out / "groups.csv")
    assert list(groups[0]) == ["group", "size", "splits", "id", "path", "split", "label"]
    by_group: dict[str, list[dict[str, str]]] = {}
    for r in groups:
        by_group.setdefault(r["group"], []).append(r)
    assert len(by_group) == summary.groups
    assert all(len(m) == int(m[0]["size"]) >= 2 for m in by_group.values())
    # every pair's two rows are in one group (connected components)
    group_of = {r["id"]: r["group"] for r in groups}
    assert all(group_of[r["id_a"]] == group_of[r["id_b"]] for r in pairs)
    first = by_group[groups[0]["group"]]
    assert {"test", "train"} <= {m["split"] for m in first}  # groups across splits come first


def test_duplicates_report_page(dup_run):
    summary, out = dup_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "deepfeat duplicates" in page
    assert "across splits" in page and "with a near-duplicate in train" in page
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(srcs) >= 6 and all(s.startswith("data:image/jpeg") for s in srcs)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)


@pytest.fixture(scope="module")
def index(planted, tmp_path_factory):
    return build_index(planted[1], tmp_path_factory.mktemp("idx") / "index")


def test_search_finds_the_original_of_a_reencoded_query(planted, index, photo_files, tmp_path):
    root = planted[0]
    query = tmp_path / "cat_small.jpg"
    im = Image.open(photo_files["cat"])
    im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(query, quality=60)
    fm = sorted((root / "train").glob("*/*.png"))[5]
    fm_query = tmp_path / "fm_reencoded.jpg"
    Image.open(fm).save(fm_query, quality=90)
    results = deepfeat.search(index.path, [query, fm_query], top_k=3, precision="fp32")
    assert [r.error for r in results] == [None, None]
    # the original and its planted q75 re-encode (in test) are the two nearest, in either order
    cat = {
        str(root / "train" / "photo" / "cat.jpg"): ("train", "photo"),
        str(root / "test" / "photo_leak" / "cat_q75.jpg"): ("test", "photo_leak"),
    }
    assert {n.path for n in results[0].neighbors[:2]} == set(cat)
    assert all((n.split, n.label) == cat[n.path] for n in results[0].neighbors[:2])
    assert results[1].neighbors[0].path == str(fm)
    sims = [n.similarity for n in results[0].neighbors]
    assert sims == sorted(sims, reverse=True)


def test_a_stored_file_queried_finds_itself_at_similarity_one(planted, index):
    path = sorted((planted[0] / "test").glob("*/*.png"))[0]
    [r] = deepfeat.search(index, [path], top_k=2, precision="fp32", workers=0)
    assert r.neighbors[0].path == str(path) and r.neighbors[0].similarity == pytest.approx(1.0, abs=2e-3)


def test_search_by_id_leaves_the_row_itself_out(planted, index):
    dst, src = planted[2]["copy_within_train"]
    rows = deepfeat.open_store(planted[1]).rows(["id", "path"])
    row_id = rows.column("id").to_pylist()[rows.column("path").to_pylist().index(str(src))]
    [r, bad] = deepfeat.search(index, ids=[row_id, "nope"], top_k=2)
    assert r.query == f"id:{row_id}" and r.neighbors[0].path == str(dst) and row_id not in [n.id for n in r.neighbors]
    assert bad.error.startswith("unknown_id")


def test_undecodable_queries_become_error_rows(planted, index, tmp_path):
    text = tmp_path / "not_an_image.jpg"
    text.write_text("hello")
    truncated = tmp_path / "truncated.png"
    good = sorted((planted[0] / "train").glob("*/*.png"))[0]
    truncated.write_bytes(good.read_bytes()[:60])
    results = deepfeat.search(index, [text, good, truncated, tmp_path / "missing.png"], top_k=2, precision="fp32")
    by = {Path(r.query).name: r for r in results}
    assert by[good.name].error is None and by[good.name].neighbors
    for name in ("not_an_image.jpg", "truncated.png", "missing.png"):
        assert by[name].error and not by[name].neighbors


def test_numpy_and_faiss_paths_agree(index, tmp_path):
    if not faiss_available():
        pytest.skip("faiss is not installed (pip install 'deepfeat[search]')")
    Q = index.vectors_of(range(0, index.rows, 7))
    s_np, r_np = index.knn(Q, 5, kind="exact")
    s_ff, r_ff = index.knn(Q, 5, kind="flat")
    np.testing.assert_allclose(s_np, s_ff, atol=1e-5)
    assert (r_np[:, 0] == r_ff[:, 0]).all()
    ivf = build_index(index.store_path, tmp_path / "ivf", kind="ivf")
    assert ivf.kind == "ivf" and (tmp_path / "ivf" / "faiss.index").is_file()
    s_iv, r_iv = ivf.knn(Q, 5, nprobe=ivf.doc["ivf"]["nlist"])  # every list visited: exact
    np.testing.assert_allclose(s_np, s_iv, atol=1e-5)
    assert (r_np[:, 0] == r_iv[:, 0]).all()


def _synthetic(path: Path, rows: int, dims: int, seed: int = 0, part: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, dims)).astype(np.float16)
    X[rows // 2 : rows // 2 + 10] = X[:10]  # ten exact duplicates, in other parts and blocks
    write_synthetic_store(path, (X[s : s + part] for s in range(0, rows, part)))
    return X


def test_a_stale_index_is_refused(tmp_path):
    store = tmp_path / "store"
    _synthetic(store, 300, 16, part=100)
    build_index(store, tmp_path / "index")
    assert open_index(tmp_path / "index").rows == 300
    _synthetic(store, 400, 16, seed=1, part=100)  # the store is rewritten: other parts
    with pytest.raises(StoreError, match="stale"):
        open_index(tmp_path / "index")
    assert main(["search", str(tmp_path / "index"), "--id", "row-1"]) == 3


def test_the_memory_budget_is_honoured(tmp_path):
    rows, dims, budget = 2_000, 512, 1 << 20
    store = tmp_path / "store"
    _synthetic(store, rows, dims, part=500)
    assert rows * dims * 4 > 3 * budget  # the store's vectors as float32: 3.9 MiB, the budget 1 MiB
    idx = build_index(store, tmp_path / "index", kind="exact", memory_budget=budget)
    block = pair_block_rows(dims, budget)
    tracemalloc.start()
    try:
        ii, jj, ss = all_pairs(idx.blocks, 0.99, block)
        _, peak_pairs = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        exact_knn(idx.blocks, idx.vectors_of(range(64)), 10, budget)
        _, peak_knn = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pi, pj, _, partitions = partitioned_pairs(idx.blocks, 0.99, budget)
        _, peak_partitioned = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ii) == 10  # the planted duplicates, found across blocks
    assert peak_pairs < budget and peak_knn < budget and peak_partitioned < budget, (peak_pairs, peak_knn, peak_partitioned)
    assert block * 10 < rows  # the scan really went block by block
    assert partitions > 10 and sorted(zip(pi, pj)) == sorted(zip(ii, jj))  # many partitions, the same pairs
    s = deepfeat.duplicates(store, tmp_path / "dups", threshold=0.99, memory_budget=budget, report=False)
    assert s.pairs == 10 and s.block_rows == block < rows and s.method == "exact"


def test_partitioned_and_exact_find_the_same_planted_pairs(planted, dup_run, tmp_path):
    store, dups = planted[1], planted[2]
    budget = 1 << 20  # partitions of a few dozen rows on this store
    k, _, _ = plan_partitions(deepfeat.open_store(store).num_rows(), 1280, budget)
    assert k >= 4
    s = deepfeat.duplicates(store, tmp_path / "p", method="partitioned", memory_budget=budget, report=False)
    assert s.method == "partitioned" and s.partitions == k and "k-means partitions" in s.line()
    exact = _read_csv(dup_run[1] / "pairs.csv")
    part = _read_csv(tmp_path / "p" / "pairs.csv")
    assert {(r["id_a"], r["id_b"]) for r in part} == {(r["id_a"], r["id_b"]) for r in exact}
    assert len(part) == len(dups) and s.leaks == dup_run[0].leaks


def test_partitioned_search_on_clustered_rows_finds_the_exact_pairs(tmp_path):
    """Near-duplicates at similarities 0.96-0.999 among 4,000 clustered rows: the partitions (more
    than 30, each row in two) miss none of the pairs that the exact scan finds above 0.95."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(20, 48))
    X = centres[rng.integers(0, 20, 4000)] + rng.normal(0, 0.7, (4000, 48))
    src = rng.choice(3000, 200, replace=False)
    X[3000 + np.arange(200)] = X[src] + rng.normal(0, 0.02, (200, 48)) * rng.uniform(0.5, 8, (200, 1))
    write_synthetic_store(tmp_path / "store", [X[:2000].astype(np.float16), X[2000:].astype(np.float16)])
    idx = build_index(tmp_path / "store", tmp_path / "index", kind="exact")
    ii, jj, _ = all_pairs(idx.blocks, 0.95, 1000)
    pi, pj, _, k = partitioned_pairs(idx.blocks, 0.95, 256 << 10)
    assert k > 30 and len(ii) >= 150
    assert set(zip(pi.tolist(), pj.tolist())) == set(zip(ii.tolist(), jj.tolist()))


def test_bad_threshold_and_top_k_exit_2(planted, index, tmp_path, capsys):
    store = str(planted[1])
    for value in ("1.5", "0", "-0.2", "nan"):
        assert main(["duplicates", store, "--out", str(tmp_path / "d"), "--threshold", value]) == 2
        assert "--threshold" in capsys.readouterr().err
        assert main(["duplicates", store, "--out", str(tmp_path / "d"), "--pixel-threshold", value]) == 2
        assert "--pixel-threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["duplicates", store, "--out", str(tmp_path / "d"), "--method", "lsh"])
    assert exc.value.code == 2
    for value in ("0", "-3"):
        assert main(["search", index.path, "--id", "x", "--top-k", value]) == 2
        assert "--top-k" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["search", index.path, "--id", "x", "--top-k", "many"])
    assert exc.value.code == 2


def test_cli_index_search_json_and_html(planted, tmp_path, capsys):
    root, store, dups = planted
    assert main(["index", str(store), "--out", str(tmp_path / "ix"), "-q"]) == 0
    assert "indexed" in capsys.readouterr().out
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    dst, src = dups["copy_train_to_test"]
    assert (
        main(["search", str(tmp_path / "ix"), str(dst), str(bad), "--top-k", "2", "--json", "--precision", "fp32", "-q"])
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query"] for x in lines] == [str(dst), str(bad)]
    assert {n["path"] for n in lines[0]["neighbors"]} == {str(dst), str(src)}
    assert set(lines[0]["neighbors"][0]) == {"path", "id", "split", "label", "similarity"}
    assert lines[1]["neighbors"] == [] and lines[1]["error"]
    out = tmp_path / "results.html"
    assert main(["search", str(tmp_path / "ix"), str(dst), "--out", str(out), "--precision", "fp32", "-q"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "deepfeat search" in page and page.count("data:image/jpeg") >= 3
    assert main(["duplicates", str(store), "--out", str(tmp_path / "d"), "-q"]) == 0
    said = capsys.readouterr().out
    assert "near-duplicate pairs" in said and "pairs.csv" in said


@pytest.fixture(scope="module")
def bundle(planted, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "m.dfm"
    deepfeat.train(planted[1], layers="pre_logits", head="logreg", solver="stream", epochs=3, out=path)
    return path


def test_evaluate_reports_the_accuracy_without_train_near_duplicates(planted, bundle, tmp_path):
    store = planted[1]
    report = deepfeat.evaluate(bundle, store, split="test", out=tmp_path / "ev")
    leak = report["leakage"]
    assert leak["rows"] == 4 and leak["n_without"] == report["n"] - 4
    assert leak["accuracy_without"] is not None
    assert {Path(e["path"]).name for e in leak["examples"]} == {
        "leak_copy.png",
        "coffee_copy.jpg",
        "cat_q75.jpg",
        "rocket_down50.png",
    }
    text = (tmp_path / "ev" / "report.txt").read_text()
    assert "near-duplicates in train: 4 of" in text and "accuracy without them" in text
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "near-duplicates of train" in page and "Near-duplicates in train" in page
    assert "leakage" not in deepfeat.evaluate(bundle, store, split="test", leakage_threshold=None)


def test_reports_render_in_chromium(dup_run, planted, index, tmp_path):
    from test_html_reports import CHROMIUM, Chromium, blank

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    results = deepfeat.search(index, [planted[2]["copy_train_to_test"][0]], top_k=3, precision="fp32")
    from deepfeat.search.report import write_results

    page = Path(write_results(results, tmp_path / "results.html"))
    browser = Chromium(CHROMIUM)
    try:
        for path in (dup_run[1] / "report.html", page):
            r = browser.load(path.resolve().as_uri())
            assert r["loaded"] and r["errors"] == [], r["errors"]
            assert {u.split(":", 1)[0] for u in r["requests"]} <= {"file", "data"}
            assert not blank(r["screenshot"])
    finally:
        browser.close()


def test_predict_with_neighbors(planted, bundle, index, tmp_path, capsys):
    from skimage import data

    stored = sorted((planted[0] / "test").glob("*/*.png"))[0]
    unseen = tmp_path / "camera.png"
    Image.fromarray(data.camera()).save(unseen)
    from unittest import mock

    import deepfeat.search.query as query

    # the bundle computes pre_logits as the store did: its features are reused, not embedded again
    with mock.patch.object(query, "neighbors_of_files", side_effect=AssertionError("embedded twice")):
        preds = deepfeat.predict_images(
            bundle, [stored, unseen], neighbors=index.path, neighbors_k=2, far_threshold=0.999, precision="fp32"
        )
    near = {Path(p.path).name: p for p in preds}
    assert near[stored.name].neighbors[0]["path"] == str(stored)  # itself: the index holds every split
    assert near[stored.name].neighbors[0]["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert near[stored.name].far_from_training is False
    assert len(near["camera.png"].neighbors) == 2 and near["camera.png"].far_from_training is True
    from deepfeat.predict import write_predictions

    rows = _read_csv(Path(write_predictions(preds, tmp_path / "p.csv")))
    assert rows[0]["nearest_path"] == str(stored) and [r["far_from_training"] for r in rows] == ["false", "true"]
    written = json.loads(Path(write_predictions(preds, tmp_path / "p.json")).read_text())
    assert written[1]["far_from_training"] is True and written[1]["neighbors"][0]["similarity"] < 0.999
    assert "far from the training images" in Path(write_predictions(preds, tmp_path / "p.html")).read_text()
    assert (
        main(
            [
                "predict",
                str(bundle),
                str(unseen),
                "--neighbors",
                index.path,
                "--far-threshold",
                "0.999",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert "FAR FROM TRAINING" in capsys.readouterr().out


def test_an_ivf_index_larger_than_the_budget_uses_product_codes(tmp_path):
    if not faiss_available():
        pytest.skip("faiss is not installed (pip install 'deepfeat[search]')")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 64))
    X = (centres[rng.integers(0, 30, 3000)] + rng.normal(0, 0.5, (3000, 64))).astype(np.float16)
    write_synthetic_store(tmp_path / "store", [X[:1500], X[1500:]])
    idx = build_index(tmp_path / "store", tmp_path / "ivfpq", kind="ivf", memory_budget=64 << 10)
    assert idx.doc["ivf"]["quantizer"].startswith("PQ")  # 3000 x 64 one-byte codes would not fit 64 KiB
    Q = idx.vectors_of(range(0, 3000, 30))
    _, exact = idx.knn(Q, 10, kind="exact")
    _, approx = idx.knn(Q, 10, nprobe=idx.doc["ivf"]["nlist"])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert recall >= 0.9, recall


def test_rows_read_from_the_vectors_file_are_the_stored_rows(tmp_path, monkeypatch):
    """RowFile.take asks the kernel for every wanted row's pages at once (adjacent rows as one range),
    then gathers them: any order, repeats, neighbours and the last row come back exactly as stored."""
    import mmap

    from deepfeat.search.index import RowFile

    rows, dims = 2000, 96  # 192-byte rows: several rows share a page, and some rows straddle two
    X = np.random.default_rng(3).normal(size=(rows, dims)).astype(np.float16)
    X.tofile(tmp_path / "v.bin")
    f = RowFile(str(tmp_path / "v.bin"), np.float16, rows, dims)
    asked: list[tuple[int, int]] = []
    real = mmap.mmap.madvise

    class Spy(mmap.mmap):
        def madvise(self, option, start=0, length=None):  # noqa: ANN001, ANN202
            if option == mmap.MADV_WILLNEED:
                asked.append((start, length))
            return real(self, option, start, *(() if length is None else (length,)))

    monkeypatch.setattr("deepfeat.search.index.mmap.mmap", Spy)
    want = np.array([1999, 5, 6, 7, 5, 1200, 0, 21, 1999])
    np.testing.assert_array_equal(f.take(want), X[want].astype(np.float32))
    covered = np.zeros(rows * dims * 2, dtype=bool)
    for start, length in asked:
        assert start % mmap.PAGESIZE == 0
        covered[start : start + length] = True
    for r in set(want.tolist()):  # every wanted row's bytes were asked for
        assert covered[r * dims * 2 : (r + 1) * dims * 2].all()
    assert len(asked) < len(set(want.tolist()))  # rows 5-7 (and 0 and 21: one page) asked as one range each


# ----------------------------------------------------------------------------- copies found by their pixels
@pytest.fixture(scope="module")
def edited(fm_dir, tmp_path_factory):
    """Fashion-MNIST (4 per class and split) with planted edits the features miss: a JPEG q40 re-encode and
    a halved copy in test of train images, a q75 re-encode within test, a 3/4 copy within train; extracted at
    96 px (docs/SEARCH.md: what the pixels find there). Returns (root, store, {name: (planted, original)})."""
    root = tmp_path_factory.mktemp("edited") / "images"
    shutil.copytree(fm_dir, root, ignore=shutil.ignore_patterns("classes.txt"))
    train, test = sorted((root / "train").glob("*/*.png")), sorted((root / "test").glob("*/*.png"))
    plants = {
        "jpeg40_train_to_test": (train[5], root / "test" / train[5].parent.name / "edit_q40.jpg"),
        "down50_train_to_test": (train[9], root / "test" / train[9].parent.name / "edit_down50.png"),
        "jpeg75_within_test": (test[2], test[2].parent / "edit_q75.jpg"),
        "down75_within_train": (train[30], train[30].parent / "edit_down75.png"),
    }
    for src, dst in plants.values():
        im = Image.open(src)
        if dst.suffix == ".jpg":
            im.save(dst, quality=int(dst.stem[-2:]))
        else:
            side = round(im.width * int(dst.stem.rsplit("down", 1)[1]) / 100)
            im.resize((side, side), Image.BILINEAR).save(dst)
    store = root.parent / "store"
    s = deepfeat.extract(root, store, input_size=96, precision="fp32", dtype="float16", workers=1)
    assert s.failed_total == 0
    return root, store, {k: (dst, src) for k, (src, dst) in plants.items()}


def test_edited_copies_the_features_miss_are_found_by_their_pixels(edited, tmp_path):
    root, store, plants = edited
    s = deepfeat.duplicates(store, tmp_path / "d")
    pairs = {frozenset((r["path_a"], r["path_b"])): r for r in _read_csv(tmp_path / "d" / "pairs.csv")}
    for name, (dst, src) in plants.items():
        row = pairs.get(frozenset((str(dst), str(src))))
        assert row is not None, f"{name} not found"
        assert row["found_by"] in ("pixels", "both") and float(row["pixel_similarity"]) >= DEFAULT_PIXEL_THRESHOLD
    # the halved image is far from its original by the features: only the pixels find it
    halved = pairs[frozenset(map(str, plants["down50_train_to_test"]))]
    assert halved["found_by"] == "pixels" and float(halved["similarity"]) < DEFAULT_THRESHOLD
    assert set(pairs) == {frozenset(map(str, p)) for p in plants.values()}  # nothing else reported
    assert s.pixel_pairs >= 1 and s.leaks == {"test": 2} and not s.unread
    assert "by pixels only" in s.line()
    page = (tmp_path / "d" / "report.html").read_text(encoding="utf-8")
    assert "pairs found by their pixels only" in page and "grey thumbnails correlate" in page
    # the partitioned scan verifies the same candidates inside each partition
    deepfeat.duplicates(store, tmp_path / "p", method="partitioned", report=False)
    partitioned = {frozenset((r["path_a"], r["path_b"])): r["found_by"] for r in _read_csv(tmp_path / "p" / "pairs.csv")}
    assert partitioned == {k: r["found_by"] for k, r in pairs.items()}
    # the same store without the pixel check: the halved copy is missed, so one leak fewer at most
    f = deepfeat.duplicates(store, tmp_path / "f", pixels=False)
    found = {frozenset((r["path_a"], r["path_b"])) for r in _read_csv(tmp_path / "f" / "pairs.csv")}
    assert frozenset(map(str, plants["down50_train_to_test"])) not in found
    assert f.pixel_threshold is None and "pixels" not in f.line()


def test_images_gone_since_extraction_are_listed_and_compared_by_features(edited, tmp_path):
    root, store, plants = edited
    dst, src = plants["down50_train_to_test"]
    moved = tmp_path / "moved.png"
    shutil.move(dst, moved)
    try:
        s = deepfeat.duplicates(store, tmp_path / "d", report=False)
    finally:
        shutil.move(moved, dst)
    unread = _read_csv(tmp_path / "d" / "unread.csv")
    assert [r["path"] for r in unread] == [str(dst)] and unread[0]["reason"]
    assert s.unread == {str(dst): unread[0]["reason"]} and "1 images unread" in s.line()
    pairs = {frozenset((r["path_a"], r["path_b"])) for r in _read_csv(tmp_path / "d" / "pairs.csv")}
    assert frozenset(map(str, (dst, src))) not in pairs  # its pixels are gone; its features are far
    assert frozenset(map(str, plants["jpeg40_train_to_test"])) in pairs  # the others are still found


def test_thumbnail_pyramids_read_in_worker_processes_are_the_same(edited, tmp_path, monkeypatch):
    from deepfeat.search import pixels

    root, store, plants = edited
    paths = [str(p) for p in sorted(root.glob("*/*/*"))[:40]] + [str(tmp_path / "missing.png"), None]
    one = pixels.pyramids(paths, str(tmp_path / "one"), workers=1)
    monkeypatch.setattr(pixels, "INLINE_ROWS", 0)
    monkeypatch.setattr(pixels, "CHUNK_ROWS", 16)
    two = pixels.pyramids(paths, str(tmp_path / "two"), workers=2)
    np.testing.assert_array_equal(one.pyramid[0 : len(paths)], two.pyramid[0 : len(paths)])
    np.testing.assert_array_equal(one.level, two.level)
    assert set(one.unread) == set(two.unread) == {40, 41}
    assert set(one.level[:40].tolist()) <= set(pixels.LEVELS) and one.level[40] == one.level[41] == 0


def test_evaluate_counts_edited_copies_of_train_images_by_their_pixels(edited, tmp_path, capsys):
    root, store, plants = edited
    model = tmp_path / "m.dfm"
    deepfeat.train(store, layers="pre_logits", head="logreg", solver="stream", epochs=3, out=model)
    report = deepfeat.evaluate(model, store, split="test", out=tmp_path / "ev")
    leak = report["leakage"]
    leaked = {Path(e["path"]).name: e for e in leak["examples"]}
    # the two edits of train images planted into test; the q75 re-encode within test is no leak
    assert set(leaked) == {"edit_q40.jpg", "edit_down50.png"} and leak["rows"] == 2
    assert leaked["edit_down50.png"]["by"] == "pixels" and leak["by_pixels"] >= 1
    assert leaked["edit_down50.png"]["train_path"] == str(plants["down50_train_to_test"][1])
    assert "by pixels only" in (tmp_path / "ev" / "report.txt").read_text()
    # features only: the halved copy is not seen
    features = deepfeat.evaluate(model, store, split="test", leakage_pixel_threshold=None)["leakage"]
    assert "edit_down50.png" not in {Path(e["path"]).name for e in features["examples"]}
    assert main(["evaluate", str(model), str(store), "--leakage-pixel-threshold", "1.5"]) == 2
    assert "--leakage-pixel-threshold" in capsys.readouterr().err


def test_an_image_changed_since_extraction_is_not_compared_by_its_pixels(edited, tmp_path):
    root, store, plants = edited
    dst, src = plants["jpeg40_train_to_test"]
    kept = dst.read_bytes()
    Image.open(src).rotate(90).save(dst, quality=40)  # another picture under the same path
    try:
        s = deepfeat.duplicates(store, tmp_path / "d", report=False)
    finally:
        dst.write_bytes(kept)
    assert s.unread == {str(dst): "the file changed since it was extracted"}
    pairs = {frozenset((r["path_a"], r["path_b"])): r for r in _read_csv(tmp_path / "d" / "pairs.csv")}
    row = pairs.get(frozenset(map(str, (dst, src))))
    assert row is None or (row["found_by"] == "features" and row["pixel_similarity"] == "")


def test_the_pixel_readers_do_not_rerun_a_script_without_a_main_guard(edited, tmp_path):
    """The pixel check's reader processes start like the decode workers: the user's script runs once."""
    import subprocess
    import sys

    root, store, plants = edited
    script = tmp_path / "dups_script.py"
    script.write_text(
        "import deepfeat\n"
        "import deepfeat.search.pixels as pixels\n"
        "pixels.INLINE_ROWS = 0  # readers in worker processes even for this small store\n"
        "print('script body ran', flush=True)\n"
        f"s = deepfeat.duplicates({str(store)!r}, {str(tmp_path / 'd')!r}, report=False, workers=2)\n"
        "print('pairs', s.pairs, 'by pixels', s.pixel_pairs, flush=True)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("script body ran") == 1
    assert f"pairs {len(plants)} by pixels" in r.stdout
    assert main(["duplicates", str(store), "--out", str(tmp_path / "e"), "--workers", "0"]) == 2
