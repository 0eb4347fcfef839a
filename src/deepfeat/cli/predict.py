"""``deepfeat predict``: a trained bundle (.dfm) or a backbone's own classifier on images."""

from __future__ import annotations

import argparse

from .common import _add_offline_arg, _add_runtime_args, _print, _print_error

#: the API function each command calls: its signature gives the options' defaults
API = {"predict": ("deepfeat.predict", "predict_images")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {"predict": {"batch_size": "images per forward pass"}}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("predict", help="classify images with a trained bundle (.dfm) or a backbone's own classifier")
    p.add_argument(
        "model",
        help="a bundle from 'deepfeat train' (model.dfm), a classifier from 'deepfeat "
        "export-model' (.onnx, OpenVINO .xml), or a backbone name (ImageNet top-k)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders, list files, WebDataset shards (.tar, "
        "{000..009} patterns), Parquet files or hf: datasets",
    )
    p.add_argument("--top-k", type=int, default=None, help="classes per image (default: 3 for a bundle, 5 for a backbone)")
    p.add_argument(
        "--out", default=None, help="write predictions to a .csv or .json file, or an .html gallery (thumbnails + top-k)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="bundle only: backbone weights file if not at the recorded path")
    _add_offline_arg(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: spare cores; 0 decodes in this process)"
    )
    _add_runtime_args(p, auto_help="auto: the bundle's own runtime and precision when they run here")
    p.add_argument(
        "--neighbors",
        default=None,
        metavar="INDEX",
        help="bundle only: an index of the training store ('deepfeat index'): add each image's nearest "
        "training rows and flag images far from all of them",
    )
    p.add_argument("--neighbors-k", type=int, default=3, help="with --neighbors: training rows per image")
    p.add_argument(
        "--far-threshold",
        type=float,
        default=0.55,
        help="with --neighbors: flag an image whose nearest training row is less similar (cosine)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.98,
        help="backbone only: the precision guard's threshold for a reduced precision, measured on the "
        "first 64 images (a bundle uses the precision its features were stored at). In (0, 1]",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``predict MODEL IMAGES...``: a bundle, an exported ``.onnx``/``.xml`` or a backbone's own classifier."""
    if args.out:  # before any image is read: a bad extension, an unwritable folder
        from ..predict import check_predictions_out

        check_predictions_out(args.out)
    from ..predict import predict_images

    preds = predict_images(
        args.model,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        weights=args.weights,
        device=args.device,
        runtime=args.runtime,
        precision=args.precision,
        workers=args.workers,
        neighbors=args.neighbors,
        neighbors_k=args.neighbors_k,
        far_threshold=args.far_threshold,
        min_agreement=args.min_agreement,
    )
    bad = sum(p.error is not None for p in preds)
    if args.out:
        from ..predict import write_predictions

        write_predictions(preds, args.out)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
    else:
        for p in preds:
            if p.error:
                _print(f"{p.path}\tERROR\t{p.error}")
            else:
                near = getattr(p, "neighbors", None)
                extra = ""
                if near is not None:
                    n0 = near[0] if near else None
                    extra = (
                        f"\tnearest training: {n0['label'] or '-'} ({n0['similarity']:.3f}) {n0['path']}"
                        if n0
                        else "\tnearest training: none"
                    )
                    extra += "\tFAR FROM TRAINING" if p.far_from_training else ""
                _print(f"{p.path}\t" + "\t".join(f"{lbl} ({s:.3f})" for lbl, s in zip(p.labels, p.scores)) + extra)
        # the summary goes to stderr: stdout is one line per image, for pipes
        _print_error(f"{len(preds):,} predictions ({bad:,} could not be classified)")
    return 0 if bad < len(preds) or not preds else 1
