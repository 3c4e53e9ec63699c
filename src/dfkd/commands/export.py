"""dfkd export: a model as ONNX, TorchScript or safetensors."""

from __future__ import annotations

import argparse

from dfkd.commands.flags import NORM_HELP, debug, model_path, require_rebuild_flags
from dfkd.models import SPEC_HELP


def add_parser(sub) -> argparse.ArgumentParser:
    x = sub.add_parser(
        "export", help="write a model as ONNX, TorchScript or safetensors",
        description="Export a model checkpoint or a run's student. onnx: a dynamic batch "
        "axis (input 'input', output 'logits'), the metadata as metadata properties, and a "
        "check that runs the file in onnxruntime and compares its logits with PyTorch's "
        "(max abs difference printed; must be below 1e-4); needs pip install "
        "'dfkd[export]'. torchscript: traced, checked the same way. safetensors: the "
        "weights and the metadata as string fields. The model takes normalised inputs, "
        "(x / 255 - mean) / std with the mean and std of its metadata.",
        epilog="example:\n  dfkd export runs/cudfkd --format onnx --out student.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("path", nargs="?", metavar="PATH", help="checkpoint file or run folder")
    x.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    x.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"))
    x.add_argument("--out", required=True, metavar="FILE", help="file to write")
    x.add_argument("--model", default=None, metavar="SPEC",
                   help=f"architecture, for checkpoints that do not name theirs (a zoo "
                        f"file, a student built in Python): {SPEC_HELP}")
    x.add_argument("--dataset", default=None,
                   help="for checkpoints without dfkd metadata: sizes the input")
    x.add_argument("--norm", metavar="NORM", default=None,
                   help=f"for checkpoints without dfkd metadata: {NORM_HELP}")
    x.add_argument("--opset", type=int, default=None, help="ONNX opset (default: PyTorch's)")
    x.add_argument("--keep-batchnorm", action="store_true",
                   help="ONNX: keep the BatchNorm layers (not fused into the convolutions), so "
                        "that the file given back as --teacher keeps the BatchNorm statistics "
                        "that the default method and the BN-prior methods read")
    debug(x)
    return x


def handle(args) -> int:
    from dfkd.export import export_model

    require_rebuild_flags(model_path(args), args, needs_data=False)
    for line in export_model(model_path(args), args.format, args.out, model_spec=args.model,
                             dataset=args.dataset, opset=args.opset, norm=args.norm,
                             keep_batchnorm=args.keep_batchnorm):
        print(line)
    return 0
