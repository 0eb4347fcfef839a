"""mkdocs hooks: the CLI reference is generated from the parser the program builds (never written by hand)
and the API reference lists every name of ``deepfeat.__all__``, so neither can drift from the code."""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

#: API reference sections: title -> public names of ``deepfeat`` (every name of ``__all__`` once)
SECTIONS = {
    "Extract and read stores": [
        "extract",
        "plan_extraction",
        "ExtractSummary",
        "discover",
        "open_store",
        "FeatureStore",
        "store_info",
        "export_store",
    ],
    "Backbones and layers": [
        "load_backbone",
        "list_models",
        "offline_mode",
        "describe_layers",
        "resolve_layers",
        "FeatureExtractor",
    ],
    "Train, probe, evaluate, predict": [
        "train",
        "TrainResult",
        "probe",
        "ProbeResult",
        "evaluate",
        "load_bundle",
        "predict_images",
        "write_predictions",
        "classify_images",
    ],
    "Ship a classifier": ["export_model"],
    "Search, near-duplicates, leakage": ["duplicates", "build_index", "open_index", "search"],
    "Your own CNN": ["train_cnn", "finetune", "CNNTrainResult"],
    "Analysis": ["analyze", "full_network_embedding"],
    "Data sets": ["write_dataset"],
}


def _cli_markdown() -> str:
    from deepfeat.cli import build_parser

    parser = build_parser()
    out = [
        "# Command-line reference",
        "",
        "Generated from the parser `deepfeat` builds (`scripts/docs_hooks.py`); `deepfeat COMMAND --help` "
        "prints the same text.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen: set[int] = set()
    for name, p in sub.choices.items():
        if id(p) in seen:
            continue
        seen.add(id(p))
        out += [f"## deepfeat {name}", "", "```text", p.format_help().rstrip(), "```", ""]
        inner = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for action in inner:
            for child, cp in action.choices.items():
                out += [f"### deepfeat {name} {child}", "", "```text", cp.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _api_markdown() -> str:
    import deepfeat

    listed = [n for names in SECTIONS.values() for n in names]
    missing = sorted(set(deepfeat.__all__) - set(listed) - {"__version__"})
    if missing:
        raise SystemExit(f"docs: public names missing from the API reference: {missing} (scripts/docs_hooks.py)")
    out = [
        "# API reference",
        "",
        "Every public name of `deepfeat`, from its docstring. The command line is a thin "
        "shell over these functions: same verbs, same parameter names.",
        "",
    ]
    for title, names in SECTIONS.items():
        out += [f"## {title}", ""]
        for n in names:
            out += [f"::: {deepfeat._API[n]}.{n}", "    options:", "      heading_level: 3", ""]
    return "\n".join(out)


def on_pre_build(config, **kwargs) -> None:  # noqa: ANN001 - mkdocs hook signature
    os.environ.setdefault("COLUMNS", "100")  # stable help wrapping
    ref = os.path.join(config["docs_dir"], "reference")
    os.makedirs(ref, exist_ok=True)
    for name, text in (("cli.md", _cli_markdown()), ("api.md", _api_markdown())):
        path = os.path.join(ref, name)
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
