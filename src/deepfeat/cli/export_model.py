"""``deepfeat export-model``: a bundle (or model directory) as one ONNX or OpenVINO classifier graph."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {"export-model": ("deepfeat.shipping", "export_model")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "export-model": {
        "out": "the file to write: .onnx, or .xml for OpenVINO (its .bin beside it); the suffix is added if missing",
        "format": "onnx (ONNX Runtime, Triton, any ONNX reader) or openvino (IR .xml + .bin: OpenVINO, OVMS)",
        "precision": "fp32, or fp16 (backbone weights stored as float16: half the file; computed in float32)",
        "overwrite": "replace an existing OUT (otherwise refused)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export-model",
        help="export a bundle (.dfm) or model directory as one ONNX/OpenVINO "
        "graph: uint8 pixels in, class scores out, metadata inside",
    )
    p.add_argument(
        "model",
        help="a bundle from 'deepfeat train' (model.dfm) or a model directory from "
        "'deepfeat train-cnn' / 'deepfeat finetune'",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="onnx", choices=api_constant("deepfeat.shipping", "FORMATS"))
    p.add_argument("--precision", default="fp32", choices=api_constant("deepfeat.shipping", "PRECISIONS"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--weights", default=None, help="bundle only: backbone weights file if not at the recorded path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..shipping import export_model

    result = export_model(
        args.model, args.out, format=args.format, precision=args.precision, overwrite=args.overwrite, weights=args.weights
    )
    _print(result.summary())
    return 0
