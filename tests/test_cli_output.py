"""The command line's output (issue 12, items 7, 9-13): help and defaults, flag names in errors,
one progress reporter (bars on a terminal, plain periodic lines otherwise), JSON summaries,
commands that never import torch, the exact solver's memory and time budget, disk full while
writing a bundle or a report.

Every test here failed on the code before its fix. Real data: Fashion-MNIST images (conftest)
and the bundled EfficientNet-Lite0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import deepfeat
from deepfeat.cli import build_parser, main

# torch runtime: no OpenVINO / ONNX export to wait for (these tests are about output, not speed)
FAST = ["--input-size", "32", "--workers", "0", "--runtime", "torch"]


@pytest.fixture(scope="module")
def fm_store(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST (4 per class and split) through Lite0 at 32 px, pre_logits (1280 dims)."""
    out = tmp_path_factory.mktemp("cli_output") / "fm_store"
    deepfeat.extract(fm_dir, out, input_size=32, workers=0, runtime="torch")
    return out


@pytest.fixture(scope="module")
def small_src(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 real Fashion-MNIST images: train/<2 classes>/*.png."""
    import shutil

    root = tmp_path_factory.mktemp("cli_output_small") / "src"
    for cls in sorted(p.name for p in (fm_dir / "train").iterdir())[:2]:
        shutil.copytree(fm_dir / "train" / cls, root / "train" / cls)
    return root


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --------------------------------------------------------------------------------------------- item 13
def test_models_help_and_info_never_import_torch(fm_store, tmp_path):
    """``deepfeat models``, ``--help`` (every subcommand's too) and ``info`` run without torch or timm in
    sys.modules (they used to take 5 s and 1.1 GB for 'models')."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    code = f"""
        import contextlib, io, sys
        from deepfeat.cli import build_parser, main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["models"]) == 0
            assert main(["info", {str(fm_store)!r}]) == 0
            for argv in (["--help"], *[[c, "--help"] for c in ("extract", "train", "export", "predict", "models")]):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0
        out = buf.getvalue()
        assert "efficientnet_lite0" in out and "rows" in out, out
        print(sorted(m for m in ("torch", "timm", "torchvision", "sklearn") if m in sys.modules))
    """
    r = _python(code, env={"TORCH_HOME": str(empty), "HF_HUB_CACHE": str(empty)})
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded and "timm" not in loaded, loaded


@pytest.fixture(scope="module")
def bundle(fm_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_output_bundle") / "m.dfm"
    deepfeat.train(fm_store, solver="exact", out=out)
    return out


def _walk(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        else:
            yield path, parser, action


# --------------------------------------------------------------------------------------------- item 11
def test_every_option_has_help_and_shows_its_default():
    """Every option of every command has a help line, and --help shows every default that is not None /
    off (train --head/--solver/--epochs/--alpha, extract --model/--dtype, export ...); the defaults are
    the API's own (read from its signatures)."""
    from deepfeat.apidefaults import api_defaults

    missing = [
        f"{' '.join(p)} {a.option_strings or a.dest}"
        for p, _, a in _walk(build_parser())
        if not a.help and a.dest not in ("help", "version")
    ]
    assert missing == [], missing
    parser = build_parser()
    for path, sub, action in _walk(parser):
        if not action.option_strings or action.default in (None, False) or action.dest in ("help", "version"):
            continue
        text = sub.format_help()
        options = text[text.index("\noptions:") :]
        m = re.search(rf"\n  (?:-\w, )?{re.escape(max(action.option_strings, key=len))}\b", options)
        assert m, (path, action.option_strings)
        entry = options[m.start() + 1 :].split("\n  -")[0]
        assert "default" in entry.lower(), (path, action.option_strings, entry)
    subs = {p: s for p, s, _ in _walk(parser)}
    train_help = " ".join(subs[("train",)].format_help().split())
    api = api_defaults("deepfeat.training", "train")
    for flag, dest in (("--epochs", "epochs"), ("--head", "head"), ("--solver", "solver"), ("--alpha", "alpha")):
        entry = train_help[train_help.index(f"{flag} {dest.upper()} ") :]
        assert f"(default: {api[dest]})" in entry[:200], entry[:200]
    args = parser.parse_args(["train", "s", "--out", "m.dfm"])
    assert (args.epochs, args.alpha, args.batch_size, args.head) == (
        api["epochs"],
        api["alpha"],
        api["batch_size"],
        api["head"],
    )


def test_every_command_takes_its_defaults_from_the_api_it_calls():
    """Each command names an API function that exists, and every option that is one of its parameters
    defaults to the API's value, sizes written with their unit (--memory-budget 1GiB <- 1 << 30). Catches a
    command pointing at a module that does not exist (its options then silently keep hand-typed defaults)."""
    import ast

    from deepfeat.apidefaults import _module_tree, api_defaults
    from deepfeat.cli import COMMANDS
    from deepfeat.units import parse_size

    apis = {name: target for module in COMMANDS.values() for name, target in module.API.items()}
    for name, (module, function) in apis.items():
        tree = _module_tree(module)
        assert tree is not None and any(isinstance(n, ast.FunctionDef) and n.name == function for n in tree.body), (
            name,
            module,
            function,
        )
    checked = 0
    for path, _sub, action in _walk(build_parser()):
        target = apis.get(" ".join(path))
        if target is None or not action.option_strings or action.dest not in api_defaults(*target):
            continue
        api = api_defaults(*target)[action.dest]
        if api is None or action.default is None or isinstance(action.default, bool):
            continue
        if action.metavar == "SIZE":
            assert parse_size(action.default) == parse_size(api), (path, action.dest)
        elif isinstance(api, (tuple, list)):
            assert action.default == ",".join(map(str, api)), (path, action.dest)
        else:
            assert action.default == api, (path, action.dest, action.default, api)
        checked += 1
    assert checked > 40
    sizes = {p: a.default for p, _, a in _walk(build_parser()) if a.dest == "memory_budget"}
    assert sizes == {
        ("train",): "1GiB",
        ("probe",): "1GiB",
        ("train-cnn",): "2GiB",
        ("finetune",): "2GiB",
        ("duplicates",): "1GiB",
        ("index",): "1GiB",
        ("search",): "1GiB",
    }


def test_usage_errors_name_command_line_flags(fm_store, tmp_path, capsys):
    """Errors raised through the CLI name --batch-size, --layer, ... not 'batch_size' or 'None'."""
    cases = [
        (["train", str(fm_store), "--out", str(tmp_path / "a.dfm"), "--batch-size", "0"], "--batch-size"),
        (["train", str(fm_store), "--out", str(tmp_path / "b.dfm"), "--patience", "-2"], "--patience"),
        (
            ["train", str(fm_store), "--out", str(tmp_path / "c.dfm"), "--head", "mlp", "--solver", "exact"],
            "--solver exact with --head mlp",
        ),
        (["analyze", str(fm_store), "--out", str(tmp_path / "r"), "--top-k", "0"], "--top-k"),
    ]
    for argv, flag in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert flag in err, err
        assert "Traceback" not in err and "parameter" not in err and "None" not in err, err
        assert not re.search(r"'[a-z]+_[a-z_]+'", err), err  # no Python parameter name such as 'batch_size'


def test_lock_message_gives_a_readable_time_and_age(fm_store):
    from deepfeat.errors import StoreLockedError
    from deepfeat.store.lock import StoreLock

    with StoreLock(str(fm_store)):
        with pytest.raises(StoreLockedError) as info:
            StoreLock(str(fm_store)).acquire()
    msg = str(info.value)
    assert f"pid {os.getpid()}" in msg and " UTC (" in msg and " ago)" in msg, msg
    assert not re.search(r"\d{10}\.\d", msg), msg  # no raw epoch float
    assert '"since"' not in msg, msg


# --------------------------------------------------------------------------------------------- item 12
def test_progress_is_plain_lines_off_a_terminal_with_rate_and_eta(
    small_src, fm_store, bundle, tmp_path, capsys, monkeypatch
):
    """stderr is not a terminal here: every long command prints plain progress lines (count, rate, ETA)
    and a final line, never '\\r' updates; the exact solver says it runs, its estimate and its time."""
    monkeypatch.setenv("DEEPFEAT_PROGRESS_INTERVAL", "0")  # a line per update: the test need not wait 10 s
    runs = {
        "extract": ["extract", str(small_src), "--out", str(tmp_path / "s"), *FAST],
        "evaluate": ["evaluate", str(bundle), str(fm_store)],
        "analyze": ["analyze", str(fm_store), "--out", str(tmp_path / "rep")],
        "fne": ["fne", str(fm_store), "--out", str(tmp_path / "fne")],
        "export": ["export", str(fm_store), "--format", "parquet", "--out", str(tmp_path / "e.parquet")],
        "predict": ["predict", str(bundle), str(small_src)],
        "exact solver": ["train", str(fm_store), "--out", str(tmp_path / "x.dfm"), "--solver", "exact"],
    }
    for what, argv in runs.items():
        assert main(argv) == 0, what
        err = capsys.readouterr().err
        assert "\r" not in err, (what, err)
        if what == "exact solver":
            assert re.search(r"exact solver \(LogisticRegression, [\d,]+ x 1,280\): running \(estimated [\d.]+ s\)", err), (
                err
            )
            assert re.search(r"exact solver .*: done in [\d.]+ s", err), err
            continue
        lines = [ln for ln in err.splitlines() if ln.startswith(what + ":") or ln.startswith(what + " ")]
        assert (
            any(re.search(r"\d+/\d+ (img|rows) \(\d+%\), [\d,.]+ (img|rows)/s, .* ETA ", ln) for ln in lines)
            or what == "analyze"
            and any("ETA" in ln for ln in lines)
        ), (what, err)
        assert re.search(rf"^{what}.*: [\d,]+ (img|rows) in [\d.]+ s \([\d,.]+ (img|rows)/s\)", err, re.M), (what, err)


def test_cli_has_one_progress_renderer():
    import inspect

    import deepfeat.cli as cli

    source = inspect.getsource(cli)
    assert "tqdm" not in source  # bars come from deepfeat.progress only
    assert "_TrainProgress" not in source and "_CNNProgress" not in source


def test_early_stopping_is_announced_and_json_summaries(fm_store, small_src, tmp_path, capsys):
    out = tmp_path / "m.dfm"
    assert (
        main(
            [
                "train",
                str(fm_store),
                "--out",
                str(out),
                "--solver",
                "stream",
                "--patience",
                "1",
                "--val-fraction",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    doc = json.loads(cap.out)  # stdout is exactly one JSON document
    assert doc["command"] == "train" and doc["exit_status"] == 0 and doc["bundle"] == str(out)
    assert doc["stopped_early"] is True and doc["best_epoch"] < doc["epochs_run"] < 20
    assert re.search(
        rf"early stopping after epoch {doc['epochs_run']} of 20: no better validation loss for 1 "
        rf"epochs; keeping epoch {doc['best_epoch']}",
        cap.err,
    ), cap.err
    assert "done in" in cap.err and "stopped early" in cap.err

    assert main(["extract", str(small_src), "--out", str(tmp_path / "s"), *FAST, "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["command"] == "extract" and doc["embedded_total"] == 8 and doc["accounted"] is True
    assert "done in" in cap.err


# --------------------------------------------------------------------------------------------- item 7
def test_auto_solver_respects_the_memory_budget_and_a_time_estimate(fm_store, tmp_path, capsys):
    """LinearSVC (liblinear) holds ~28 bytes per value: at a 1 MiB budget auto streams (it used to count
    12 and pick the exact solver); the issue's 3,603 x 22,288 x 10-class job is estimated at ~13 min,
    so auto streams it too."""
    r = deepfeat.train(fm_store, head="svm", memory_budget="1MiB", epochs=2)
    assert r.solver == "stream"
    from deepfeat.training import _choose_solver, exact_cost

    need, _ = exact_cost("svm", r.n_train, 1280, 10)
    assert 1 << 20 < need <= 28 * r.n_train * 1280
    assert (
        main(
            [
                "train",
                str(fm_store),
                "--out",
                str(tmp_path / "auto.dfm"),
                "--head",
                "svm",
                "--memory-budget",
                "1MiB",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert "solver: stream (auto: the exact solver needs about" in capsys.readouterr().out
    b, t = exact_cost("logreg", 3603, 22288, 10)
    solver, why = _choose_solver("auto", "logreg", b, t, 1 << 30)
    assert solver == "stream" and t > 600 and "--solver exact forces it" in why
    assert _choose_solver("auto", "logreg", *exact_cost("logreg", 3603, 1280, 10), 1 << 30)[0] == "exact"


# --------------------------------------------------------------------------------------------- item 10
def _limited(argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess whose files cannot grow past ``limit`` bytes (RLIMIT_FSIZE: EFBIG, as on a
    full disk); Python ignores SIGXFSZ, so writes fail with an error instead of killing the process."""
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "deepfeat.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_files,
        cwd=cwd,
        env={**os.environ, "MPLCONFIGDIR": str(cwd / "mpl")},
    )


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics")
def test_disk_full_while_writing_a_bundle_or_a_report_exits_4_and_leaves_nothing(fm_store, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    r = _limited(["train", str(fm_store), "--out", str(models / "m.dfm"), "--solver", "exact"], 16 << 10, tmp_path)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and "disk is full" in r.stderr, r.stderr
    assert os.listdir(models) == []  # neither the bundle nor a temporary file

    report = tmp_path / "report"
    r = _limited(["analyze", str(fm_store), "--out", str(report)], 16 << 10, tmp_path)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr and "disk is full" in r.stderr, r.stderr
    assert not report.exists() or os.listdir(report) == [], os.listdir(report)
    # with room, the same commands write everything
    assert main(["analyze", str(fm_store), "--out", str(report)]) == 0
    assert {"report.html", "features.parquet", "summary.json"} <= set(os.listdir(report))
    assert not [n for n in os.listdir(report) if n.startswith(".")]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics")
def test_disk_full_while_writing_a_training_checkpoint_exits_4(fm_store, tmp_path):
    """The streaming solver's checkpoint after epoch 1 hits the limit: exit 4, nothing left behind."""
    models = tmp_path / "models"
    models.mkdir()
    r = _limited(["train", str(fm_store), "--out", str(models / "s.dfm"), "--solver", "stream"], 16 << 10, tmp_path)
    assert r.returncode == 4 and "Traceback" not in r.stderr and "disk is full" in r.stderr, r.stderr
    assert os.listdir(models) == []


# --------------------------------------------------------------------------------------------- item 9
def test_plot_filters_defaults_to_the_models_first_convolution(tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["plot", "filters", "efficientnet_lite0", "--out", str(out)]) == 0
    assert "conv_stem: 32 filters (32x3x3x3), RGB" in capsys.readouterr().out
    assert out.stat().st_size > 1000


def test_predict_on_a_missing_file_says_missing(bundle, tmp_path, capsys):
    assert main(["predict", str(bundle), str(tmp_path / "nope.jpg")]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and "vanished" not in out


def test_progress_reporter_modes(caplog):
    """A terminal gets a tqdm bar; the Python API (no reporter installed) gets INFO log lines every 10 %."""
    import io
    import logging

    from deepfeat import progress

    buf = io.StringIO()
    with progress.Reporter("bar", stream=buf).installed():
        assert list(progress.track(range(5), "demo", total=5, unit="rows")) == [0, 1, 2, 3, 4]
        progress.note("early stopping after epoch 3")
    out = buf.getvalue()
    assert "\rdemo: 100%" in out and "5/5" in out and "early stopping after epoch 3\n" in out
    with caplog.at_level(logging.INFO, logger="deepfeat.progress"):
        assert sum(progress.track(range(20), "api", total=20, unit="rows")) == 190
    lines = [r.getMessage() for r in caplog.records if r.name == "deepfeat.progress"]
    assert len(lines) == 11 and lines[0].startswith("api: 2/20 rows (10%)") and lines[-1].startswith("api: 20 rows in")


def test_predict_reads_shards_and_parquet_as_it_reads_files(bundle, fm_dir, tmp_path, capsys):
    """predict (and classify) take WebDataset shards -- here a brace pattern -- and Parquet files as extract
    does: every sample is classified, named by its place in the container, with the very scores of the same
    image given as a file; a sample without an image is an error line, not a silent gap."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds
    from test_shard_sources import _fm_images, _write_shards

    from deepfeat.predict import predict_images

    images = _fm_images(fm_dir)
    _write_shards(fm_dir, tmp_path / "shards", per_shard=len(images) // 2)
    with wds.TarWriter(str(tmp_path / "shards" / "00002.tar")) as sink:
        sink.write({"__key__": "no_image", "cls": "Bag", "json": {"split": "train"}})
    pq.write_table(pa.table({"jpg": [data for *_, data in images]}), tmp_path / "fm.parquet", row_group_size=16)

    def key(name: str) -> str:  # the image a prediction is about, as _write_shards keys it
        if "#" in name:  # shard.tar#<key>.png
            return name.rsplit("#", 1)[1].rsplit(".", 1)[0]
        path = Path(name)
        return f"{path.parent.parent.name}_{path.parent.name}_{path.stem}"

    files = {key(p.path): p for p in predict_images(bundle, [fm_dir], workers=0)}
    assert len(files) == len(images) and all(p.error is None for p in files.values())
    spec = str(tmp_path / "shards" / "{00000..00002}.tar")
    assert main(["predict", str(bundle), spec, "--out", str(tmp_path / "shards.json"), "--workers", "0"]) == 0
    printed = capsys.readouterr()
    shards = json.loads((tmp_path / "shards.json").read_text())
    shards = shards["predictions"] if isinstance(shards, dict) else shards
    bad = [p for p in shards if p.get("error")]
    assert len(bad) == 1 and "no_image" in bad[0]["error"] and "Traceback" not in printed.err
    good = [p for p in shards if not p.get("error")]
    assert len(good) == len(images) and all("#" in p["path"] for p in good)
    for p in good:
        f = files[key(p["path"])]
        assert (p["labels"], p["scores"]) == (f.labels, f.scores), p["path"]
    rows = predict_images(bundle, [tmp_path / "fm.parquet"], workers=0)
    assert len(rows) == len(images) and all(r.error is None for r in rows)
    by_scores = sorted(tuple(r.scores) for r in rows)
    assert by_scores == sorted(tuple(f.scores) for f in files.values())
