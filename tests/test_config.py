"""``deepfeat --config FILE``: top-level keys for every command, per-command sections, checked values."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepfeat.cli import _apply_config, build_parser, main
from deepfeat.errors import UsageError


def parse(cfg: Path, *argv: str):
    argv = ["--config", str(cfg), *argv]
    parser = build_parser()
    _apply_config(parser, argv)
    return parser.parse_args(argv)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sections_scope_keys_per_command(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
layers: blocks.2,pre_logits     # every command with --layers
top-k: 5                        # '-' or '_'
train:
  alpha: 1e-4                   # the L2 penalty (a string in YAML 1.1: converted like the flag)
  layers: [pre_logits]          # a list becomes "pre_logits"
analyze:
  alpha: 0.01                   # the FDR
  out: analysis/                # --out is required, the section gives it
""",
    )
    a = parse(cfg, "analyze", "store/")
    assert (a.alpha, a.out, a.layers, a.top_k) == (0.01, "analysis/", "blocks.2,pre_logits", 5)
    t = parse(cfg, "train", "store/", "--out", "m.dfm")
    assert t.alpha == 1e-4 and isinstance(t.alpha, float) and t.layers == "pre_logits"
    f = parse(cfg, "fne", "store/", "--out", "fne/")
    assert f.layers == "blocks.2,pre_logits"
    e = parse(cfg, "evaluate", "m.dfm", "store/")
    assert e.top_k == "5"  # evaluate's --top-k is a list "1,3"; it gets the top-level value too
    # flags on the command line win over the section and the top level
    a = parse(cfg, "analyze", "store/", "--alpha", "0.2", "--out", "x/", "--layers", "pre_logits")
    assert (a.alpha, a.out, a.layers) == (0.2, "x/", "pre_logits")
    # the analyze section's out does not make train's --out optional
    with pytest.raises(SystemExit):
        parse(cfg, "train", "store/")


def test_top_level_keys_still_apply_to_all_commands(tmp_path: Path) -> None:
    cfg = write(tmp_path, "alpha: 0.02\nsplit: val\nverbose: 1\n")
    assert parse(cfg, "analyze", "s/", "--out", "o/").alpha == 0.02
    assert parse(cfg, "train", "s/", "--out", "m.dfm").alpha == 0.02
    args = parse(cfg, "evaluate", "m.dfm", "s/")
    assert args.split == "val" and args.verbose == 1


def test_nested_plot_sections(tmp_path: Path) -> None:
    cfg = write(tmp_path, "plot:\n  out: p.png\n  embedding:\n    method: tsne\n")
    a = parse(cfg, "plot", "embedding", "store/")
    assert (a.method, a.out) == ("tsne", "p.png")
    assert parse(cfg, "plot", "history", "model/").out == "p.png"


@pytest.mark.parametrize(
    "text, message",
    [
        ("bins: 64\nnot_an_option: 1\n", "'not_an_option'"),
        ("train:\n  bins: 64\n", "'deepfeat train'"),  # bins is analyze's option, not train's
        ("train: 0.1\n", "section 'train' must be a mapping"),
        ("analyze:\n  bins: lots\n", "int"),
        ("analyze:\n  bins: 6.5\n", "int"),
        ("extract:\n  dtype: float64\n", "must be one of"),
        ("fne:\n  overwrite: 'yes'\n", "true or false"),
        ("- a\n- b\n", "mapping"),
        ("bins: [1, 2\n", "not valid YAML"),
        ("analyze:\n  store: x/\n", "'deepfeat analyze'"),  # positional: give it on the command line
        ("!!python/object/apply:os.system ['echo unsafe']\n", "not valid YAML"),  # safe_load only
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse(cfg, "analyze", "s/", "--out", "o/")
    assert main(["--config", str(cfg), "analyze", "s/", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr()
    assert err.err.startswith("error: ") and "Traceback" not in err.err and "unsafe" not in err.out


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "analyze", "s/", "--out", "o/"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_empty_config_changes_nothing(tmp_path: Path) -> None:
    cfg = write(tmp_path, "# nothing\n")
    a = parse(cfg, "analyze", "s/", "--out", "o/")
    assert (a.alpha, a.bins, a.sample_rows, a.batch_size) == (0.05, 64, 2048, 2048)
