"""``deepfeat predict``: a trained bundle (.dfm) or a backbone's own classifier on images."""
from __future__ import annotations

import argparse

from .common import _add_offline_arg, _add_runtime_args, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"predict": ("deepfeat.predict", "predict_images")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {"predict": {"batch_size": "images per forward pass"}}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help="classify images with a trained bundle (.dfm) or a backbone's own classifier")
    p.add_argument("model", help="a bundle from 'deepfeat train' (model.dfm), or a backbone name (ImageNet top-k)")
    p.add_argument("inputs", nargs="+", help="image files, folders or list files")
    p.add_argument("--top-k", type=int, default=None, help="classes per image (default: 3 for a bundle, 5 for a backbone)")
    p.add_argument("--out", default=None,
                   help="write predictions to a .csv or .json file, or an .html gallery (thumbnails + top-k)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="bundle only: backbone weights file if not at the recorded path")
    _add_offline_arg(p)
    p.add_argument("--device", default="cpu", help="bundle only: cpu | cuda | auto")
    _add_runtime_args(p, auto_help="auto: the bundle's own runtime and precision when they run here")
    p.set_defaults(func=run)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..classify import classify_images

    preds = classify_images(args.model, args.inputs, top_k=args.top_k, runtime=args.runtime,
                            precision=args.precision)
    bad = 0
    for p in preds:
        if p.error:
            bad += 1
            _print(f"{p.path}\tERROR\t{p.error}")
        else:
            _print(f"{p.path}\t" + "\t".join(f"{lbl} ({prob:.3f})" for lbl, prob in zip(p.labels, p.probabilities)))
    return 0 if bad < len(preds) or not preds else 1


def _is_bundle_arg(value: str) -> bool:
    from ..bundle import SUFFIX, is_bundle

    return value.lower().endswith(SUFFIX) or is_bundle(value)


def cmd_predict_bundle(args: argparse.Namespace) -> int:
    from ..predict import predict_images, write_predictions

    preds = predict_images(args.model, args.inputs, top_k=3 if args.top_k is None else args.top_k,
                           batch_size=args.batch_size,
                           weights=args.weights, device=args.device, runtime=args.runtime,
                           precision=args.precision)
    bad = sum(p.error is not None for p in preds)
    if args.out:
        write_predictions(preds, args.out)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
    else:
        for p in preds:
            if p.error:
                _print(f"{p.path}\tERROR\t{p.error}")
            else:
                _print(f"{p.path}\t" + "\t".join(f"{lbl} ({s:.3f})" for lbl, s in zip(p.labels, p.scores)))
    return 0 if bad < len(preds) or not preds else 1


def run(args: argparse.Namespace) -> int:
    """``predict BUNDLE.dfm ...`` uses a trained bundle; ``predict MODEL ...`` the backbone's own classifier."""
    if _is_bundle_arg(args.model):
        return cmd_predict_bundle(args)
    if args.top_k is None:
        args.top_k = 5
    if args.out:
        from ..classify import classify_images
        from ..predict import write_predictions

        preds = classify_images(args.model, args.inputs, top_k=args.top_k, runtime=args.runtime,
                                precision=args.precision)
        write_predictions(preds, args.out)
        bad = sum(p.error is not None for p in preds)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
        return 0 if bad < len(preds) or not preds else 1
    return cmd_predict(args)

