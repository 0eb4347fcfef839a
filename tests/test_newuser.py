"""A new user's mistakes and surprises (issue 12): nothing silently dropped, no traceback, clear exits.

Every test here failed on the code before its fix. Real photos (scikit-image) and the real bundled
backbone (EfficientNet-Lite0) wherever the behaviour depends on them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import deepfeat
from deepfeat.cli import main
from deepfeat.sources.walk import walk

FAST = ["--input-size", "32", "--workers", "0", "-q"]


def _copy(photo_files: dict[str, Path], where: dict[str, str]) -> None:
    """Copy the sample photos: {'cat': 'F/cat.jpg', ...}."""
    for key, dest in where.items():
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo_files[key], dest)


# --------------------------------------------------------------------------------------------- item 4
def test_flat_folder_with_one_subfolder_embeds_every_image(photo_files, tmp_path, capsys):
    """F/*.jpg + F/thumbs/x.jpg: the top-level photos are embedded unlabeled, not excluded, and the
    run says so; the store written inside F (--out F/feats) never becomes an input on a rerun."""
    src = tmp_path / "F"
    _copy(
        photo_files,
        {
            "cat": f"{src}/cat.jpg",
            "coffee": f"{src}/coffee.jpg",
            "astronaut": f"{src}/astronaut.jpg",
            "rocket": f"{src}/thumbs/rocket.jpg",
        },
    )
    out = src / "feats"
    assert main(["extract", str(src), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "4 embedded" in printed and "0 excluded" in printed
    assert "mixed layout: 3 image files directly in the source folder" in printed
    store = deepfeat.open_store(out)
    assert store.num_rows() == 4
    # rerun: the store's own folder (parts/*.npy, *.parquet, manifest.json) is neither an input nor an exclusion
    s = deepfeat.extract(src, out, input_size=32, workers=0)
    assert (s.discovered, s.excluded, s.already_done, s.embedded_now, s.embedded_total) == (4, 0, 4, 0, 4)
    assert s.notes and "mixed layout" in s.notes[0]


def test_store_inside_a_flat_source_keeps_it_flat(photo_files, tmp_path):
    src = tmp_path / "flat"
    _copy(photo_files, {"cat": f"{src}/cat.jpg", "coffee": f"{src}/coffee.jpg"})
    out = src / "feats"
    deepfeat.extract(src, out, input_size=32, workers=0)
    assert walk(src).layout == "class"  # without skip_dirs the store looks like a class folder
    d = walk(src, skip_dirs=[out])
    assert (d.layout, len(d.items), d.excluded, d.notes) == ("flat", 2, [], [])
    s = deepfeat.extract(src, out, input_size=32, workers=0)
    assert (s.discovered, s.excluded, s.already_done, s.notes) == (2, 0, 2, [])


# --------------------------------------------------------------------------------------------- item 5
def test_empty_or_unusable_source_exits_1_with_a_clear_final_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["extract", str(empty), "--out", str(tmp_path / "f1"), *FAST]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"nothing embedded: {empty} holds no image files; exit status 1"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not an image")
    (notes / ".hidden.jpg").write_bytes(b"x")
    assert main(["extract", str(notes), "--out", str(tmp_path / "f2"), *FAST]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "holds no usable image file (2 entries excluded at discovery: hidden=1, not_image_extension=1" in last


def test_source_of_only_bad_images_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"<html>not a photo</html>")
    (bad / "b.png").write_bytes(b"")
    assert main(["extract", str(bad), "--out", str(tmp_path / "f"), *FAST]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "nothing embedded: all 2 inputs failed (see the failures above); exit status 1"


@pytest.fixture(scope="module")
def fm_store(fm_dir, tmp_path_factory) -> Path:
    """Real Fashion-MNIST (4 per class and split) through the bundled backbone at 32x32, no views."""
    out = tmp_path_factory.mktemp("nu") / "fm_feats"
    deepfeat.extract(fm_dir, out, input_size=32, workers=0)
    return out


# --------------------------------------------------------------------------------------------- item 6
def test_train_refuses_an_existing_bundle_unless_overwrite(fm_store, tmp_path, capsys):
    import os

    model = tmp_path / "model.dfm"
    args = ["train", str(fm_store), "--solver", "exact", "--out", str(model)]
    assert main(args) == 0
    before = model.read_bytes()
    # written 0644 (the umask's permissions) like every other output, e.g. the store's manifest
    assert model.stat().st_mode & 0o777 == (fm_store / "manifest.json").stat().st_mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o666 & ~umask
    capsys.readouterr()
    assert main([*args, "--alpha", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert model.read_bytes() == before
    with pytest.raises(deepfeat.errors.UsageError, match="already exists"):
        deepfeat.train(fm_store, solver="exact", out=model)
    assert main([*args, "--alpha", "0.1", "--overwrite"]) == 0
    assert model.read_bytes() != before


# --------------------------------------------------------------------------------------------- item 8
def test_a_job_larger_than_the_free_space_is_refused_up_front(photo_files, tmp_path, capsys, monkeypatch):
    """The disk is made to look nearly full (shutil.disk_usage reports 1 KiB free on the output's
    filesystem): the job is refused before any image is read, exit 4; --ignore-free-space runs it."""
    import shutil as sh

    real = sh.disk_usage
    asked: list[str] = []

    def nearly_full(path):
        asked.append(str(path))
        u = real(path)
        return type(u)(u.total, u.total - 1024, 1024)

    monkeypatch.setattr(sh, "disk_usage", nearly_full)
    src = tmp_path / "photos"
    _copy(photo_files, {"cat": f"{src}/cat.jpg", "coffee": f"{src}/coffee.jpg"})
    out = tmp_path / "feats"
    assert main(["extract", str(src), "--out", str(out), *FAST]) == 4
    captured = capsys.readouterr()
    assert "job: 2 rows x 1,280 dims x 4 B = 10.0 KiB" not in captured.out  # refused before the plan line
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("environment error: the job needs about 10.0 KiB (2 rows x 1,280 dims")
    assert "has 1.0 KiB free" in err[0] and "--ignore-free-space" in err[0]
    assert asked and asked[-1] == str(out)
    assert deepfeat.open_store(out).num_rows() == 0
    assert main(["extract", str(src), "--out", str(out), *FAST, "--ignore-free-space"]) == 0
    assert deepfeat.open_store(out).num_rows() == 2
    monkeypatch.setattr(sh, "disk_usage", real)
    assert deepfeat.extract(src, out, input_size=32, workers=0).already_done == 2  # the real disk has room


# --------------------------------------------------------------------------------------------- item 9
@pytest.fixture(scope="module")
def fm_bundle(fm_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nu_bundle") / "fm.dfm"
    deepfeat.train(fm_store, solver="exact", out=out)
    return out


def test_tta_on_a_store_without_views_is_an_error(fm_bundle, fm_store, capsys):
    assert main(["evaluate", str(fm_bundle), str(fm_store), "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(fm_bundle), str(fm_store), "--split", "test", "--tta"]) == 2
    err = capsys.readouterr().err
    assert "--tta" in err and "holds none" in err and "--views" in err and "Traceback" not in err


def test_predict_top_k_0_is_an_error_and_a_missing_file_is_not_found(fm_bundle, photo_files, tmp_path, capsys):
    cat = str(photo_files["cat"])
    for model in (str(fm_bundle), "efficientnet_lite0"):
        assert main(["predict", model, cat, "--top-k", "0"]) == 2
        assert "--top-k" in capsys.readouterr().err
    missing = str(tmp_path / "no_such_photo.jpg")
    for model in (str(fm_bundle), "efficientnet_lite0"):
        assert main(["predict", model, missing, cat, "--top-k", "1"]) == 0
        lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.strip().splitlines())
        assert lines[missing] == "ERROR\tmissing: not found (no such file or folder)"
        assert "vanished" not in lines[missing] and "ERROR" not in lines[cat]
    assert lines[cat].startswith(("tiger cat", "tabby", "Egyptian cat"))  # the bundled model's ImageNet top-1
    assert main(["predict", "efficientnet_lite0", missing]) == 1  # nothing could be classified


def test_hidden_without_the_mlp_head_is_an_error(fm_store, tmp_path, capsys):
    out = tmp_path / "m.dfm"
    assert main(["train", str(fm_store), "--head", "logreg", "--hidden", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--hidden" in err and "'logreg' head has none" in err and not out.exists()
    with pytest.raises(deepfeat.errors.UsageError, match="hidden"):
        deepfeat.train(fm_store, head="svm", hidden=(32,))


def test_a_memory_budget_without_a_unit_is_refused(fm_store, tmp_path, capsys):
    out = tmp_path / "m.dfm"
    for bare in ("10", "512"):
        assert main(["train", str(fm_store), "--memory-budget", bare, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{bare!r} has no unit" in err and f"{bare}MiB or {bare}GiB" in err and not out.exists()
    assert main(["train", str(fm_store), "--memory-budget", "10MiB", "--solver", "exact", "--out", str(out)]) == 0
    assert deepfeat.load_bundle(out).metadata["training"]["memory_budget"] == 10 << 20


# --------------------------------------------------------------------------------------------- item 10
def test_list_files_in_utf16_or_with_nul_bytes_are_usage_errors(photo_files, tmp_path, capsys):
    _copy(photo_files, {"cat": f"{tmp_path}/cat.jpg"})
    lists = {
        "u16.txt": "cat.jpg,cat\n".encode("utf-16"),  # with a byte-order mark
        "u16le.csv": "cat.jpg,cat\n".encode("utf-16-le"),  # without one: NUL bytes
        "nul.csv": b"cat.jpg,cat\nco\x00ffee.jpg,cup\n",
    }
    for name, data in lists.items():
        (tmp_path / name).write_bytes(data)
        assert main(["extract", str(tmp_path / name), "--out", str(tmp_path / f"out_{name}"), *FAST]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: The list file") and "UTF-8" in err[0], err
        assert ("is UTF-16 text" if name == "u16.txt" else "holds a NUL byte on line ") in err[0]
    (tmp_path / "bom8.csv").write_bytes("path,label\ncat.jpg,cat\n".encode("utf-8-sig"))  # a UTF-8 BOM is fine
    assert [(i.relpath, i.label) for i in walk(tmp_path / "bom8.csv").items] == [("cat.jpg", "cat")]


def test_a_huge_input_size_is_a_usage_error(photo_files, tmp_path, capsys):
    _copy(photo_files, {"cat": f"{tmp_path}/src/cat.jpg"})
    for args in (
        ["extract", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--input-size", "100000"],
        ["layers", "efficientnet_lite0", "--input-size", "100000"],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "error: The 'input_size' (--input-size) must be at most 4096 pixels a side; got 100000x100000, "
            "whose input tensor alone is 111.8 GiB per image."
        ]


# --------------------------------------------------------------------------------------------- item 14
ROOT = Path(__file__).resolve().parents[1]


def test_make_test_sets_up_first_and_the_demo_trains_the_streaming_head_the_readme_describes():
    import re

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup$", makefile, re.M) and re.search(r"^test-slow: setup$", makefile, re.M)
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    (train,) = [line for line in demo.splitlines() if "deepfeat train" in line]
    readme = (ROOT / "README.md").read_text()
    assert "trains\na streaming logistic head" in readme or "a streaming logistic head" in readme
    assert "--head logreg" in train and "--solver stream" in train


def test_reliability_md_cites_only_tests_that_exist():
    import re

    doc = (ROOT / "docs" / "RELIABILITY.md").read_text()
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}
    cited = re.findall(r"(test_\w+\.py)::(test_\w+)(\*?)", doc)
    assert len(cited) > 30
    for name, func, star in cited:
        assert name in sources, name
        pattern = rf"^def {func}\w*\(" if star else rf"^def {func}\("
        assert re.search(pattern, sources[name], re.M), f"{name}::{func}{star}"
    for func in set(re.findall(r"`(test_\w+)`", doc)):  # bare names in the tables
        assert any(re.search(rf"^def {func}\(", s, re.M) for s in sources.values()), func
    for reason in (
        "unidentified",
        "truncated",
        "too_large",
        "aspect_ratio",
        "unsupported_format",
        "vanished",
        "worker_crash",
        "nonfinite_features",
    ):
        assert f"`{reason}`" in doc, reason


def test_a_script_without_a_main_guard_runs_once_and_does_not_hang(fm_dir, tmp_path) -> None:
    """Issue 12 item 3: spawned decode workers must not re-run the user's script (README's first example)."""
    import subprocess
    import sys

    script = tmp_path / "extract_script.py"
    script.write_text(
        "import deepfeat\n"
        "print('script body ran', flush=True)\n"
        f"s = deepfeat.extract({str(fm_dir / 'train')!r}, {str(tmp_path / 'feats')!r}, layers='pre_logits',\n"
        "                     input_size=32, workers=2, runtime='torch')\n"
        f"p = deepfeat.classify_images('efficientnet_lite0', [{str(fm_dir / 'test')!r}], top_k=1, workers=1)\n"
        "print('embedded', s.embedded_total, 'classified', len(p), flush=True)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("script body ran") == 1  # the workers never ran it
    assert "embedded 40 classified 40" in r.stdout


# ===================================================================================== issue 28 (new-user pass 3)
# --------------------------------------------------------------------------------------------- item 1
def test_a_tree_of_symlinks_embeds_every_image_and_keeps_the_link_paths(fm_dir, tmp_path, capsys):
    """A split built with `ln -s` (links to files outside the folder) embeds every image; each row keeps
    the link's path and the target's sha256. --symlinks-inside-root refuses such links (nothing embedded)."""
    import hashlib
    import os

    targets = sorted((fm_dir / "train" / "bag").glob("*.png"))[:3] + sorted((fm_dir / "train" / "coat").glob("*.png"))[:2]
    tree = tmp_path / "t"
    for target in targets:
        link = tree / "train" / target.parent.name / target.name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    out = tmp_path / "o"
    assert main(["extract", str(tree), "--out", str(out), *FAST]) == 0
    assert f"{len(targets)} embedded" in capsys.readouterr().out
    rows = deepfeat.open_store(out).rows(["path", "label", "split", "sha256"]).to_pylist()
    want = {
        str(tree / "train" / t.parent.name / t.name): (t.parent.name, hashlib.sha256(t.read_bytes()).hexdigest())
        for t in targets
    }
    assert {r["path"]: (r["label"], r["sha256"]) for r in rows} == want
    assert {r["split"] for r in rows} == {"train"}
    refused = tmp_path / "o2"
    assert main(["extract", str(tree), "--out", str(refused), "--symlinks-inside-root", *FAST]) == 1
    assert f"symlink_outside_root={len(targets)}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- items 2 and 3
def _mount(args: list[str]) -> bool:
    import subprocess

    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only bind mount (permissions do not stop root; a read-only filesystem does)."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "existing").mkdir()
    if not (_mount(["--bind", str(ro), str(ro)]) and _mount(["-o", "remount,bind,ro", str(ro)])):
        subprocess.run(["umount", str(ro)], capture_output=True)
        pytest.skip("needs mount --bind (root in a mount namespace)")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture
def small_tmpfs():
    """small_tmpfs(path, "64k"): a tmpfs of that size mounted on a new folder, unmounted after the test."""
    import subprocess

    mounted: list[Path] = []

    def make(path: Path, size: str) -> Path:
        path.mkdir()
        if not _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]):
            pytest.skip("needs mount -t tmpfs (root)")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def _listing(folder: Path) -> list[str]:
    import os

    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder) for n in dirs + files)


def test_every_writing_verb_checks_its_output_up_front_and_exits_4(fm_store, fm_bundle, photo_files, read_only_dir, capsys):
    """evaluate, probe, analyze, predict --out, plot, train and export into a read-only mount: exit 4 with one
    'cannot be written' line before any work (train does not fit first), no traceback, nothing written."""
    ro = read_only_dir
    verbs = {
        "evaluate": ["evaluate", str(fm_bundle), str(fm_store), "--out", f"{ro}/ev"],
        "probe": ["probe", str(fm_store), "--out", f"{ro}/existing/pr", "--epochs", "1"],
        "analyze": ["analyze", str(fm_store), "--out", f"{ro}/an"],
        "predict": ["predict", str(fm_bundle), str(photo_files["cat"]), "--out", f"{ro}/p.html", "--workers", "0"],
        "plot": ["plot", "embedding", str(fm_store), "--out", f"{ro}/e.png"],
        "train": ["train", str(fm_store), "--out", f"{ro}/m.dfm", "--epochs", "1"],
        "export": ["export", str(fm_store), "--out", f"{ro}/x.h5", "--format", "hdf5"],
        "fne": ["fne", str(fm_store), "--out", f"{ro}/fne"],
    }
    for verb, args in verbs.items():
        assert main(args) == 4, verb
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.startswith("environment error")]
        assert len(lines) == 1 and "cannot be written" in lines[0] and "Read-only file system" in lines[0], (verb, err)
        assert "Traceback" not in err + out and "epoch" not in err, verb
    assert _listing(ro) == ["existing"]


def test_disk_full_while_writing_reports_exits_4_and_leaves_nothing(
    fm_store, fm_bundle, photo_files, tmp_path, capsys, small_tmpfs
):
    """The up-front check passes (the folder is writable) but the disk fills while the files are written:
    exit 4 with one line, and no partial report nor temporary file (evaluate's files are staged, predict's
    page is written to a temporary file that is removed)."""
    full = small_tmpfs(tmp_path / "full", "48k")
    assert main(["evaluate", str(fm_bundle), str(fm_store), "--out", f"{full}/ev"]) == 4
    tiny = small_tmpfs(tmp_path / "tiny", "8k")
    assert (
        main(
            ["predict", str(fm_bundle), *[str(p) for p in photo_files.values()], "--out", f"{tiny}/p.html", "--workers", "0"]
        )
        == 4
    )
    err = capsys.readouterr().err
    assert err.count("No space left on device") == 2 and "Traceback" not in err, err
    assert "rerun the same command." in err and "resume" not in err
    assert _listing(full) in ([], ["ev"]) and _listing(tiny) == []


@pytest.mark.parametrize("fmt", ["hdf5", "npy"])
def test_export_on_a_nearly_full_disk_exits_4_and_leaves_nothing(fm_store, tmp_path, fmt, small_tmpfs):
    """export into a small tmpfs, in a process of its own (HDF5 used to die of SIGSEGV, npy of SIGBUS):
    refused up front with exit 4; and with the up-front check disabled, the preallocation fails with exit
    4 before any feature is written. No temporary file is left; the same export fits a larger disk."""
    import os
    import subprocess
    import sys

    full = small_tmpfs(tmp_path / "full", "256k")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(deepfeat.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    skip_check = (
        "import deepfeat.store.export as ex; real = ex.check_writable; "
        "ex.check_writable = lambda out, what, directory=False, need=0: real(out, what, directory=directory); "
    )
    for prelude in ("", skip_check):
        code = prelude + "import sys; from deepfeat.cli import main; sys.exit(main(sys.argv[1:]))"
        r = subprocess.run(
            [sys.executable, "-c", code, "export", str(fm_store), "--out", f"{full}/x.{fmt}", "--format", fmt],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
        assert "No space left on device" in r.stderr or "free space" in r.stderr or "free;" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert _listing(full) == []
    big = small_tmpfs(tmp_path / "big", "64m")
    assert main(["export", str(fm_store), "--out", f"{big}/x.{fmt}", "--format", fmt]) == 0


# --------------------------------------------------------------------------------------------- item 6
def test_an_interrupt_says_whether_the_command_resumes_or_starts_over(fm_store, tmp_path, capsys, monkeypatch):
    """Ctrl-C in probe (which does not resume) no longer says extract's 'rerun the same command to resume'."""
    import deepfeat.probing

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deepfeat.probing, "probe", interrupted)
    assert main(["probe", str(fm_store), "--out", str(tmp_path / "p")]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "interrupted: nothing partial was left; rerun the same command to start over (it does not resume)"
    assert not (tmp_path / "p").exists()
    from deepfeat.cli import interrupt_message

    assert "resume" in interrupt_message("extract") and "last complete epoch" in interrupt_message("train-cnn")


# --------------------------------------------------------------------------------------------- item 7
def test_pool_cls_on_a_cnn_vector_is_refused(photo_files, tmp_path, capsys):
    """--pool cls on EfficientNet's pre_logits (a vector: no class token) was accepted and recorded."""
    src = tmp_path / "photos"
    _copy(photo_files, {"cat": f"{src}/cat.jpg"})
    assert main(["extract", str(src), "--out", str(tmp_path / "o"), "--layers", "pre_logits", "--pool", "cls", *FAST]) == 2
    err = capsys.readouterr().err
    assert "pre_logits" in err and "needs a token sequence with a class token" in err and "a vector" in err
    assert not (tmp_path / "o").exists()


def test_fne_of_an_fne_store_is_refused(fm_store, tmp_path, capsys):
    assert main(["fne", str(fm_store), "--out", str(tmp_path / "f1")]) == 0
    capsys.readouterr()
    assert main(["fne", str(tmp_path / "f1"), "--out", str(tmp_path / "f2")]) == 2
    assert "already a full-network embedding" in capsys.readouterr().err
    assert not (tmp_path / "f2").exists()


def test_train_layers_all_is_every_stored_layer(fm_store, tmp_path):
    store = deepfeat.open_store(fm_store)
    r = deepfeat.train(fm_store, layers="all", solver="exact")
    assert [s.name for s in r.layers] == store.layer_names
    with pytest.raises(deepfeat.errors.UsageError, match="has no layer 'nope'.*'all' names every one"):
        deepfeat.train(fm_store, layers="nope", solver="exact")


def test_a_shard_cut_inside_a_member_header_is_a_ledger_entry(fm_dir, tmp_path):
    """A tar cut inside the header of a sample's second member: that sample (whose label is lost) and the
    shard's cut are in the ledger as truncated_shard; before, tarfile ended quietly and the sample was
    embedded without its label (or, cut in its first member's header, was in no ledger at all)."""
    import io
    import tarfile

    images = sorted((fm_dir / "train" / "bag").glob("*.png"))[:3]
    full = tmp_path / "full.tar"
    with tarfile.open(full, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, p in enumerate(images):
            for name, data in ((f"{i:06d}.png", p.read_bytes()), (f"{i:06d}.cls", b"bag")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with tarfile.open(full) as tf:
        header_at = {m.name: m.offset for m in tf.getmembers()}
    shards = tmp_path / "shards"
    shards.mkdir()
    raw = full.read_bytes()
    (shards / "a.tar").write_bytes(raw[: header_at["000001.cls"] + 200])  # inside sample 1's label header
    (shards / "b.tar").write_bytes(raw[: header_at["000002.png"] + 60])  # inside sample 2's first header
    out = tmp_path / "o"
    s = deepfeat.extract(f"{shards}/{{a,b}}.tar", out, input_size=32, workers=0)
    ledger = {
        (r["path"].rsplit("/", 1)[-1], r["status"], r["reason"]) for r in deepfeat.open_store(out).ledger().to_pylist()
    }
    assert ("a.tar#000001", "excluded", "truncated_shard") in ledger
    assert ("b.tar#000002", "excluded", "truncated_shard") in ledger
    embedded = sorted(k for k, status, _ in ledger if status == "embedded")
    assert embedded == ["a.tar#000000.png", "b.tar#000000.png", "b.tar#000001.png"], ledger
    assert s.embedded_total == 3 and s.accounted
    labels = deepfeat.open_store(out).rows(["label"]).column("label").to_pylist()
    assert labels == ["bag"] * 3


# --------------------------------------------------------------------------------------------- item 8
def test_part_size_takes_a_size_with_a_unit(photo_files, tmp_path, capsys):
    """--part-size 8MiB was an argparse error although help and README speak of ~256 MiB parts."""
    src = tmp_path / "photos"
    _copy(photo_files, {k: f"{src}/{k}.jpg" for k in photo_files})
    out = tmp_path / "o"
    # pre_logits of EfficientNet-Lite0 in float16: 1280 x 2 B a row, so 6KiB is 2 inputs a part
    assert (
        main(
            [
                "extract",
                str(src),
                "--out",
                str(out),
                "--layers",
                "pre_logits",
                "--dtype",
                "float16",
                "--part-size",
                "6KiB",
                *FAST,
            ]
        )
        == 0
    )
    assert [p.rows for p in deepfeat.open_store(out).parts] == [2, 2]
    # the final line says where the time went: "27.1 s (73.9 img/s)" against the loop's 149.7 img/s hid it
    done = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("done in"))
    assert re.search(r"img/s; \d+\.\d s loading the model and runtime, then \d+\.\d img/s\)", done), done
    with pytest.raises(SystemExit) as exited:  # an argparse error: usage and one line, exit 2
        main(["extract", str(src), "--out", str(tmp_path / "o2"), "--part-size", "8x", *FAST])
    assert exited.value.code == 2
    assert "--part-size must be a number of inputs (e.g. 512) or a size with a unit" in capsys.readouterr().err


def test_plot_activations_prints_no_pytorch_warning(photo_files, tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepfeat",
            "plot",
            "activations",
            "efficientnet_lite0",
            str(photo_files["cat"]),
            "--layer",
            "blocks.2",
            "--out",
            str(tmp_path / "a.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr


def test_the_analysis_page_has_no_markdown_backticks_and_wide_tables_scroll(fm_store, tmp_path):
    assert main(["analyze", str(fm_store), "--out", str(tmp_path / "a")]) == 0
    page = (tmp_path / "a" / "report.html").read_text()
    assert "`" not in page
    assert page.count("<table>") == page.count('<div class="tablewrap"><table>') > 0


# --------------------------------------------------------------------------------------------- item 9
def _run_in_a_terminal(code: str, timeout: float = 300) -> tuple[int, str]:
    """``python -c code`` with stdout and stderr on a pseudo-terminal, as in a terminal; (status, output)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 120 columns, as a terminal
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(deepfeat.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_the_python_api_shows_progress_and_a_summary_by_default(fm_dir, fm_store, tmp_path):
    """deepfeat.extract(...) in a terminal: a progress bar and a summary line, from the CLI's reporter;
    progress=False prints nothing. (Before, the API was silent for jobs that may run for hours.)"""
    src = fm_dir / "train"
    code = (
        f"import deepfeat; deepfeat.extract({str(src)!r}, {str(tmp_path / 'a')!r}, input_size=32, workers=0, "
        f"batch_size=4); deepfeat.evaluate is not None"
    )
    status, out = _run_in_a_terminal(code)
    assert status == 0, out
    assert "img/s" in out and "100%" in out, out  # a tqdm bar
    assert re.search(r"extract: 40 embedded and 0 failed this run in \d+\.\d s; .* holds 40 embedded", out), out
    status, out = _run_in_a_terminal(
        code.replace("batch_size=4", "batch_size=4, progress=False").replace("'a'", "'b'").replace("/a'", "/b'")
    )
    assert status == 0 and out.strip() == "", out
    # off a terminal (a log, a pipe): plain lines; the summary line too
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        report = deepfeat.evaluate(_bundle(fm_store, tmp_path), fm_store)
    assert f"evaluate: accuracy {report['accuracy']:.4f}" in buf.getvalue()


def _bundle(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m.dfm"
    deepfeat.train(store, solver="exact", out=out, progress=False)
    return out


# --------------------------------------------------------------------------------------------- item 0
def test_ctrl_c_during_an_exact_solve_exits_130_within_seconds(fm_store, tmp_path):
    """train --head svm --solver exact, with liblinear told to run (practically) forever on the real store:
    Ctrl-C to the process group ends the command within seconds (exit 130, one line, no bundle). Before,
    the interrupt waited for the native solver to return (285 s after Ctrl-C in the issue)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys\n"
        "from sklearn.svm import LinearSVC\n"
        "from deepfeat.heads.linear import LinearSVMHead\n"
        "LinearSVMHead.exact_estimator = classmethod(lambda cls, C, w, seed, p: LinearSVC(C=1e6, tol=1e-15, "
        "max_iter=10**9, dual=True))\n"
        "from deepfeat.cli import main\n"
        f"sys.argv = ['deepfeat', 'train', {str(fm_store)!r}, '--head', 'svm', '--solver', 'exact', "
        f"'--out', {str(tmp_path / 'm.dfm')!r}]\n"
        "sys.exit(main())\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(deepfeat.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        err = b""
        deadline = time.monotonic() + 240
        while b"exact solver (LinearSVC" not in err:  # the solver has started
            assert p.poll() is None and time.monotonic() < deadline, err.decode()
            err += os.read(p.stderr.fileno(), 4096)
        time.sleep(2.0)
        assert p.poll() is None, "the solve ended by itself"
        t = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        out, rest = p.communicate(timeout=60)
        took = time.monotonic() - t
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = (err + rest).decode(errors="replace")
    print(f"exit {took:.2f} s after Ctrl-C")
    assert p.returncode == 130 and took < 10, (p.returncode, took, text)
    assert "Traceback" not in text and text.strip().splitlines()[-1].startswith("interrupted:"), text
    assert not (tmp_path / "m.dfm").exists()
