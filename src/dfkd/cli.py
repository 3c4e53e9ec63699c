"""The ``dfkd`` command. It stays thin: parse, build the config, call the API."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import traceback
from pathlib import Path

from dfkd.errors import DfkdError

EPILOG = """examples:
  dfkd train-teacher --dataset fashion_mnist --model lenet5 --epochs 10 --out runs/teacher.pt
  dfkd evaluate --checkpoint runs/teacher.pt
  dfkd distill --teacher runs/teacher.pt --student lenet5_half --method cudfkd --out runs/cudfkd
  dfkd distill --config configs/fashion_mnist/cudfkd_lenet5.yaml --set epochs=1 --out runs/smoke
  dfkd distill --resume runs/cudfkd
  dfkd evaluate runs/cudfkd                  # the run's student (runs/cudfkd/student.pt)
  dfkd export runs/cudfkd --format onnx --out student.onnx
  dfkd plot runs/cudfkd runs/dafl --out curves.png
"""


NORM_HELP = ("the input normalisation the model was trained with: auto (default: the "
             "checkpoint's own; for a bare state dict on CIFAR-10/100, the public CIFAR model "
             "zoo's constants; else the dataset's), zoo, dataset, or MEAN:STD (comma-separated "
             "per channel, e.g. 0.5,0.5,0.5:0.25,0.25,0.25)")


def _tracker_flags(sp: argparse.ArgumentParser, what: str) -> None:
    """--tracker and --tracker-uri (dfkd.trackers), for distill, bench and tune."""
    sp.add_argument("--tracker", action="append", default=None, metavar="NAME",
                    help=f"log {what} to an experiment tracker as well (repeatable): "
                         "tensorboard (event files in the run folder's tensorboard/), mlflow "
                         "(the config as parameters, each epoch's metrics, sample grids and "
                         "the student), wandb (offline in the run folder's wandb/ unless you "
                         "have logged in). Each epoch is logged once, also across kills and "
                         "--resume; a tracker that fails warns once and the run goes on. "
                         "Needs pip install 'dfkd[NAME]'")
    sp.add_argument("--tracker-uri", metavar="URI", default=None,
                    help="MLflow's tracking URI, e.g. http://127.0.0.1:5000 or "
                         "sqlite:///mlflow.db (default: $MLFLOW_TRACKING_URI, else "
                         "sqlite:///mlflow.db in the current folder)")


def _tracker_sets(args) -> list[str]:
    """--tracker/--tracker-uri as --set overrides (JSON: YAML reads it back unchanged)."""
    out = [f"tracker={json.dumps(args.tracker)}"] if args.tracker else []
    return out + ([f"tracker_uri={json.dumps(args.tracker_uri)}"] if args.tracker_uri else [])


def _place_sets(args) -> list[str]:
    """--device/--data-root as --set overrides, for the commands that take settings."""
    out = [f"device={args.device}"] if args.device else []
    # JSON-quoted: the path stays a string whatever it looks like in YAML (~, yes, 1e3)
    return out + ([f"data_root={json.dumps(args.data_root)}"] if args.data_root else [])


def _parser() -> argparse.ArgumentParser:
    from dfkd.data import DATASETS
    from dfkd.methods import list_methods
    from dfkd.models import SPEC_HELP, list_models

    p = argparse.ArgumentParser(
        prog="dfkd", description="Data-free knowledge distillation: train a student to imitate "
        "a teacher with no real training data (CuDFKD and baselines).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser,
               data_root: str = "folder holding the dataset files (when given, the only "
                                "place searched; default: the standard places)") -> None:
        sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to run (default: auto = cuda if available)")
        sp.add_argument("--data-root", metavar="DIR", default=None, help=data_root)
        sp.add_argument("--no-progress", action="store_true",
                        help="no progress bar; print one line per epoch instead")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")

    t = sub.add_parser("train-teacher", help="train a model on real data (teacher or reference)",
                       description="Supervised training with SGD (Nesterov) and a one-cycle "
                       "cosine schedule. Saves state_dict + metadata (architecture, dataset, "
                       "normalisation, test accuracy, settings), so 'dfkd distill' needs only "
                       "the checkpoint. With a student architecture this is the 'from scratch' "
                       "reference; with --kd-from it is the 'KD with data' reference.")
    t.add_argument("--dataset", default="fashion_mnist", help=f"one of {', '.join(DATASETS)}")
    t.add_argument("--model", default="lenet5", metavar="SPEC",
                   help=f"architecture: {SPEC_HELP} (default lenet5; zoo: "
                        f"{', '.join(list_models())})")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="flip a fraction P of the training labels at random (robustness study)")
    t.add_argument("--kd-from", metavar="CKPT", default=None,
                   help="train by KD from this teacher on the real data (the data-driven ceiling)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--download", action="store_true",
                   help="download the dataset from its official source if it is missing")
    t.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write")
    common(t)

    e = sub.add_parser(
        "evaluate", help="test accuracy of a checkpoint or of a run's student",
        description="Acc@1 (and Acc@5 with more than 5 classes) on the test set (or --split "
        "val). PATH is a model checkpoint (train-teacher's .pt, a student.pt or "
        "student.safetensors, a zoo file with --model and --dataset) or a run folder of "
        "'dfkd distill', whose student.pt is evaluated; on the split the run was measured on "
        "(summary.json's eval_split: test unless the run used --eval-split val) it gives "
        "the summary's final_acc1.")
    e.add_argument("path", nargs="?", metavar="PATH", help="checkpoint file or run folder")
    e.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    e.add_argument("--dataset", default=None, help="needed only if the checkpoint does not say")
    e.add_argument("--model", default=None, metavar="SPEC",
                   help=f"architecture, for checkpoints that do not name theirs (a zoo "
                        f"file, a student built in Python): {SPEC_HELP}")
    e.add_argument("--norm", metavar="NORM", default=None, help=NORM_HELP)
    e.add_argument("--split", choices=("test", "val"), default="test",
                   help="real data to measure on (default test; val: the held-out part of the "
                        "training set, for choosing configurations)")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")
    common(e)

    d = sub.add_parser(
        "distill", help="data-free distillation of a student from a teacher checkpoint",
        description="Run a data-free distillation. Settings come from the defaults, then "
        "--config FILE, then the flags below, then each --set key=value (dotted keys, "
        "e.g. --set cudfkd.tau=4 --set student_optim.lr=0.05). Without --config, the "
        "defaults are the validated recipe of the nearest family by the images' geometry, "
        "for the chosen method: grey images of 32 px or less: configs/fashion_mnist/; "
        "other images up to 48 px (32 px colour): configs/cifar10/ (the ResNet pair); "
        "larger ones (64 px): configs/tiny_imagenet/. Only its training settings are taken "
        "(never its teacher, student or dataset); the run prints which recipe it started "
        "from and config.yaml records it as base_recipe; every flag and --set still wins "
        "(--set base_recipe=none: the engine defaults; --set base_recipe=FILE: that "
        "recipe, which also sets the method: a --method naming another one is refused). "
        "Each epoch the student is also scored against the teacher on 1024 held-out "
        "synthetic images (synthetic_agreement, synthetic_loyalty: a signal that "
        "needs no data; making them once costs a few seconds for a small teacher, a minute "
        "or more for a large one on a CPU, and the run says so when it is long; --set "
        "synthetic_probe=0 turns it off), and a run that is not learning says so once, "
        "with settings to try. Writes DIR/config.yaml (the settings it runs with), "
        "DIR/metrics.jsonl "
        "(one line per epoch), DIR/samples/epoch_NNN.png, DIR/checkpoint.pt (each epoch), "
        "the student as DIR/student.pt and DIR/student.safetensors (each epoch), "
        "DIR/summary.json and, with matplotlib, DIR/curves.png. Ctrl-C saves a checkpoint; "
        "--resume DIR continues exactly (with --set, those settings change for the rest of "
        "the run, e.g. --set student_optim.lr=0.01 after a student diverged). A student "
        "loss that becomes non-finite or over 1000 times its first epoch's (and over 1000) "
        "stops the run, naming the student's learning rate.",
        epilog=f"methods: {', '.join(list_methods())}\nmodels: {', '.join(list_models())}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--config", metavar="FILE",
                   help="YAML recipe: a file, or a bundled recipe by name from any folder "
                        "(e.g. fashion_mnist/cudfkd_lenet5; the configs/ prefix and .yaml "
                        "are optional); without it, the recipe of the images' family (see "
                        "above). Paths inside it (teacher, data_root) are relative to the "
                        "working folder")
    d.add_argument("--teacher", metavar="CKPT",
                   help="teacher checkpoint: train-teacher's .pt, a distilled student (a run "
                        "folder, its student.pt or student.safetensors), or a zoo file with "
                        "--teacher-model")
    d.add_argument("--teacher-model", metavar="SPEC",
                   help="teacher architecture, only for checkpoints that do not name theirs (a "
                        "zoo file, a timm or own model's state_dict, a student built in Python): "
                        f"{SPEC_HELP}")
    d.add_argument("--teacher-norm", metavar="NORM",
                   help=f"for the teacher, {NORM_HELP}. The generator's output, the student and "
                        "the evaluation all use it; summary.json and student.pt record it. A "
                        "teacher near chance on the eval split stops the run before training "
                        "(--set check_teacher=false forces it)")
    d.add_argument("--student", metavar="SPEC",
                   help=f"student architecture (default lenet5_half): {SPEC_HELP}. "
                        "config.yaml and student.pt record it, so --resume and evaluate "
                        "rebuild it")
    d.add_argument("--method", metavar="NAME",
                   help="distillation method (default cudfkd, or dafl for a teacher without "
                        "BatchNorm, which the run says in one line; with --set "
                        "base_recipe=FILE, the recipe's method, and another one is refused)")
    d.add_argument("--dataset", metavar="NAME",
                   help="test data for evaluation (default: the teacher's dataset)")
    d.add_argument("--eval-split", choices=("test", "val"), default=None,
                   help="real data the per-epoch metrics are computed on (default test). Use "
                        "val, a fixed part of the training set that no student trains on, to "
                        "compare configurations; read test once, for the reported number")
    d.add_argument("--epochs", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable); with --resume, it changes "
                        "that setting for the rest of the run")
    d.add_argument("--out", metavar="DIR", help="output folder")
    d.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted run in DIR, with the settings it recorded "
                        "(only --set, --device, --data-root and the tracker flags go with it)")
    d.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    d.add_argument("--stop-after-epoch", type=int, metavar="N",
                   help="checkpoint and exit after epoch N (time-sliced jobs); resume later")
    _tracker_flags(d, "each epoch's metrics")
    common(d)

    b = sub.add_parser(
        "bench", help="compare methods x seeds on one teacher/student pair at one budget",
        description="Runs every method (and the references 'scratch' and 'kd_with_data') for "
        "every seed under identical conditions, at most --jobs at once, then writes "
        "DIR/results.md, results.csv, results.json (mean ± std and a 95% interval over seeds; "
        "the first method minus each other one as a paired difference over the same seeds) "
        "and curves.png (needs matplotlib). Finished runs are skipped and interrupted ones "
        "resumed, so re-running an interrupted bench continues it; a run whose stored config "
        "differs from the current one is refused, naming the key.")
    b.add_argument("--config", required=True, metavar="FILE",
                   help="bench YAML: a file, or a bundled one by name (e.g. "
                        "fashion_mnist/bench). Its recipes: entries are found next to the "
                        "bench file first, then in the working folder, then among the bundled "
                        "recipes; base.teacher and other paths are relative to the working "
                        "folder")
    b.add_argument("--methods", required=True,
                   help="comma-separated rows: methods, the references scratch and "
                        "kd_with_data, and rows named in the config's recipes (e.g. "
                        "cudfkd_paper), e.g. cudfkd,cudfkd_paper,dafl,scratch")
    b.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    b.add_argument("--teacher", metavar="CKPT", default=None,
                   help="teacher checkpoint instead of the config's base.teacher (e.g. a "
                        "noisy-label teacher for the robustness table)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the shared budget (base), e.g. --set epochs=5")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="runs at once, each in its own process with cores/N threads "
                        "(default: one per CPU core this process may use, which respects "
                        "taskset and SLURM/cgroup cpusets; 1 runs them one after another "
                        "here)")
    b.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="run one run per GPU at a time on N GPUs (sets --jobs N; each worker "
                        "sees only its GPU)")
    b.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    b.add_argument("--report-only", action="store_true",
                   help="write the results from the runs finished so far, run nothing "
                        "(DIR must not be in use by a running bench)")
    _tracker_flags(b, "every run (one MLflow experiment or W&B group named after DIR; tags "
                      "method, seed, teacher)")
    common(b)

    r = sub.add_parser(
        "reproduce", help="the papers' CIFAR table: every method x pair x seed, official "
        "recipes, published numbers beside the measured ones",
        description="Runs each method's official recipe (configs/cifar10|cifar100/, every "
        "value traced to its official script) on the pairs of the papers' CIFAR table (C10 "
        "R34->R18, C10 WRN40-2->WRN16-1, C10 WRN40-2->WRN40-1, C100 R34->R18, C100 "
        "WRN40-2->WRN16-2) with the public CIFAR model zoo's teachers, through 'dfkd bench' "
        "(DIR/<pair>/: interrupted runs resume when the command is repeated). Writes "
        "DIR/table.md and DIR/table.json: measured test Acc@1 (mean ± std over seeds) beside "
        "the published one, paired differences against CuDFKD with 95% intervals, and hours "
        "per run. fp32 by default, as the papers' code; --fast for bf16 + channels_last + "
        "torch.compile (CUDA). Each teacher is fed the zoo's normalisation.",
        epilog="example:\n  dfkd reproduce --data-root ~/data --teachers "
        "checkpoints/pretrained --seeds 0,1,2 --gpus 4 --out runs/reproduce\n"
        "  (--data-root holds cifar-10-batches-py/ and cifar-100-python/; --teachers holds "
        "cifar10_resnet34.pth, cifar10_wrn40_2.pth, cifar100_resnet34.pth, "
        "cifar100_wrn40_2.pth)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--teachers", required=True, metavar="DIR",
                   help="folder of the zoo's teachers, named <dataset>_<arch>.pth")
    r.add_argument("--methods", default="all",
                   help="comma-separated rows (default all: cudfkd, dafl, zskt, deepinv, dfq, "
                        "cmi, dfad, and the Fast variants)")
    r.add_argument("--pairs", default="all",
                   help="comma-separated pairs (default all): c10_resnet34_resnet18, "
                        "c10_wrn40_2_wrn16_1, c10_wrn40_2_wrn40_1, c100_resnet34_resnet18, "
                        "c100_wrn40_2_wrn16_2")
    r.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    r.add_argument("--fast", action="store_true",
                   help="bf16 autocast, channels_last and torch.compile (CUDA) instead of fp32")
    r.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="one run per GPU at a time on N GPUs (default: one run at a time on "
                        "the default device)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every run (e.g. --set epochs=1 for a smoke "
                        "run; the table then says the recipes were not run in full)")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    r.add_argument("--report-only", action="store_true",
                   help="write the table from the runs finished so far, run nothing")
    common(r, data_root="required (but with --dry-run or --report-only): the folder holding "
                        "cifar-10-batches-py/ and cifar-100-python/")

    tu = sub.add_parser(
        "tune", help="choose a recipe's hyperparameters on the val split (Optuna)",
        description="Runs short distillations with values drawn from the recipe's 'search:' "
        "section and keeps the one with the best final-epoch Acc@1 on the val split (a fixed "
        "part of the training set no student trains on; the test set is never read). A "
        "median pruner stops poor trials early; trial 0 is the recipe as written. The study "
        "lives in DIR/study.db, so running the same command again continues it; --storage "
        "URL shares one study between "
        "machines. Writes DIR/best.yaml (a runnable recipe), DIR/trials.csv, "
        "DIR/signal.json (how well the data-free signal ranked the trials), "
        "DIR/search.png (needs matplotlib) and each trial's run in DIR/trials/NNNN. Needs "
        "pip install 'dfkd[tune]'.",
        epilog="example:\n  dfkd tune --config configs/fashion_mnist/cudfkd_lenet5.yaml "
        "--teacher runs/teacher.pt --trials 20 --set epochs=4 --out runs/tune_cudfkd",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_argument("--config", required=True, metavar="RECIPE",
                    help="YAML recipe with a 'search:' section: a file, or a bundled recipe "
                         "by name (e.g. fashion_mnist/cudfkd_lenet5)")
    tu.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    tu.add_argument("--trials", type=int, required=True, metavar="N",
                    help="finished trials (complete or pruned) the study should reach")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe key for every trial (the trial budget, e.g. "
                         "--set epochs=4); best.yaml keeps the recipe's own values")
    tu.add_argument("--out", required=True, metavar="DIR")
    tu.add_argument("--storage", metavar="URL", default=None,
                    help="Optuna RDB storage shared by several tune processes, e.g. "
                         "postgresql://... (default: sqlite in DIR)")
    tu.add_argument("--study-name", default=None,
                    help="default: the recipe's file name without .yaml")
    tu.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    _tracker_flags(tu, "every trial as a run of its own (experiment or group tune-NAME, "
                       "the sampled values among its parameters, its val Acc@1 as final_acc1)")
    common(tu)

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
    x.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks on errors")

    pl = sub.add_parser(
        "plot", help="draw the curves of one or more runs into a PNG",
        description="One figure, one line per run: Acc@1 and Agreement@1 by epoch and by "
        "training wall time, the data-free signal (agreement on the synthetic probe), the "
        "loss terms (student and generator), the pace λ, the "
        "adversarial weight and the v* statistics of the self-paced weights; panels whose "
        "keys no run logged are left out. A folder that is not a run (a bench or tune "
        "output) stands for every run below it. Needs pip install 'dfkd[plot]'.",
        epilog="example:\n  dfkd plot runs/cudfkd runs/dafl --out compare.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    pl.add_argument("--out", required=True, metavar="FILE.png", help="image to write")
    pl.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show full tracebacks on errors")
    return p


def _progress(args) -> bool | None:
    """None lets the engine decide: a bar on a terminal, one line per epoch otherwise."""
    return False if args.no_progress else None


def _cmd_train_teacher(args) -> int:
    from dfkd.teacher import SupervisedSettings, train_supervised

    settings = SupervisedSettings(
        dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, label_noise=args.label_noise,
        seed=args.seed, device=args.device or "auto", data_root=args.data_root,
        download=args.download, kd_from=args.kd_from)
    from dfkd.data import dataset_info
    from dfkd.models import create_model
    dataset_info(args.dataset)          # fail on bad names before loading anything
    create_model(args.model, 10, 1)
    progress = not args.no_progress and sys.stderr.isatty()
    _, meta = train_supervised(settings, out=args.out, progress=progress)
    print(f"{meta['arch']} on {meta['dataset']}: test Acc@1 {meta['test_acc1']:.2f}% "
          f"({meta['train_seconds']:.0f} s) -> {args.out}")
    return 0


def _model_path(args) -> str:
    """PATH or --checkpoint PATH: one of them."""
    from dfkd.errors import ConfigError

    if args.path and args.checkpoint and args.path != args.checkpoint:
        raise ConfigError("give the checkpoint once: PATH or --checkpoint PATH")
    path = args.path or args.checkpoint
    if not path:
        raise ConfigError("which model? give a checkpoint file or a run folder (PATH)")
    return path


def _require_rebuild_flags(path: str, args, needs_data: bool) -> None:
    """Every flag the model file still needs, named in one message (not one per try)."""
    from dfkd.checkpoint import missing_rebuild_flags, read_model_meta
    from dfkd.errors import ConfigError

    missing = missing_rebuild_flags(read_model_meta(path), model=args.model,
                                    dataset=args.dataset, needs_data=needs_data)
    if missing:
        raise ConfigError(f"'{path}' does not record all that rebuilds its model; pass "
                          + " and ".join(missing))


def _cmd_evaluate(args) -> int:
    from dfkd.teacher import evaluate_checkpoint

    _require_rebuild_flags(_model_path(args), args, needs_data=True)
    result = evaluate_checkpoint(_model_path(args), dataset=args.dataset,
                                 data_root=args.data_root,
                                 device=args.device or "auto", model=args.model,
                                 split=args.split, norm=args.norm)
    if args.json:
        print(json.dumps(result))
    else:
        extra = f"  Acc@5 {result['acc5']:.2f}%" if "acc5" in result else ""
        source = result["normalization"]["source"]
        norm = "" if source == "checkpoint" else f"  (input normalisation: {source})"
        print(f"{result['arch']} on {result['dataset']} {result['split']}: "
              f"Acc@1 {result['acc1']:.2f}%{extra}{norm}")
    return 0


def _cmd_distill(args) -> int:
    from dfkd.api import build_trainer, load_run_checkpoint
    from dfkd.config import merge, parse_overrides, read_yaml
    from dfkd.distributed import init_from_env, shutdown
    from dfkd.errors import ConfigError
    from dfkd.recipes import resolve_named
    from dfkd.report import draw_run_curves, result_table

    if args.resume:
        if args.out and args.out != args.resume:
            raise ConfigError("--resume DIR continues the run in DIR; do not also give --out")
        # The run goes on as DIR/config.yaml recorded it: a flag that sets up a new run
        # would be ignored, so it is refused rather than dropped in silence.
        unused = [flag for flag, value in (
            ("--config", args.config), ("--teacher", args.teacher),
            ("--teacher-model", args.teacher_model), ("--teacher-norm", args.teacher_norm),
            ("--student", args.student), ("--method", args.method), ("--dataset", args.dataset),
            ("--eval-split", args.eval_split), ("--epochs", args.epochs), ("--seed", args.seed),
            ("--overwrite", args.overwrite or None)) if value is not None]
        if unused:
            raise ConfigError(f"--resume DIR continues the run as DIR/config.yaml recorded it, "
                              f"so {', '.join(unused)} would not apply; change a setting for "
                              "the rest of the run with --set KEY=VALUE (e.g. --set "
                              "student_optim.lr=0.01)")
        state = load_run_checkpoint(args.resume)  # read once: config and state
        # --set with --resume: those settings change for the rest of the run (the student's
        # rate goes on from the same point of its schedule, at the new value); where it runs
        # and reads its data may change too (another machine).
        raw = merge(dict(state["config"]),
                    parse_overrides([*_place_sets(args), *args.set, *_tracker_sets(args)]))
        out, resume = args.resume, True
    else:
        if not args.out:
            raise ConfigError("--out DIR is required (or --resume DIR)")
        raw = read_yaml(resolve_named(args.config)) if args.config else {}
        flags = {"teacher": args.teacher, "teacher_model": args.teacher_model,
                 "student": args.student, "method": args.method, "dataset": args.dataset,
                 "epochs": args.epochs, "seed": args.seed, "device": args.device,
                 "eval_split": args.eval_split, "teacher_norm": args.teacher_norm,
                 "data_root": args.data_root, "tracker": args.tracker,
                 "tracker_uri": args.tracker_uri}
        raw = merge(raw, {k: v for k, v in flags.items() if v is not None})
        overrides = parse_overrides(args.set)
        if args.config and "base_recipe" in overrides:
            raise ConfigError("--set base_recipe picks the recipe to start from when no "
                              "--config is given; with --config, that file is the recipe")
        raw = merge(raw, overrides)
        out, resume, state = args.out, False, None
    # Under torchrun, join the process group before anything touches a device.
    dist = init_from_env(raw.get("device") or "auto")
    trainer = None
    try:
        trainer = build_trainer(raw, out, resume=resume, overwrite=args.overwrite,
                                progress=_progress(args), state=state,
                                base_recipe=not resume and not args.config)
        summary = trainer.fit(stop_after_epoch=args.stop_after_epoch)
        epoch, epochs = trainer.epoch, trainer.cfg.epochs
    finally:
        del trainer  # its DDP-wrapped models hold the process group: shutdown() frees both
        shutdown()
    if dist.is_main:
        if epoch < epochs:
            print(f"stopped after epoch {epoch}; continue with: dfkd distill --resume {out}")
        else:
            print(result_table(summary))
            if summary.get("final_synthetic_agreement") is not None:
                print(f"data-free signal (student vs teacher on "
                      f"{summary['synthetic_probe']['size']} held-out synthetic images): "
                      f"synthetic_agreement {summary['final_synthetic_agreement']:.2f}%, "
                      f"synthetic_loyalty {summary['final_synthetic_loyalty']:.4f}")
            curves = ", curves.png" if draw_run_curves(out) else ""
            print(f"results in {out}/ (summary.json, metrics.jsonl, samples/, checkpoint.pt, "
                  f"student.pt, student.safetensors{curves})")
    return 0


def _cmd_bench(args) -> int:
    from dfkd.bench import run_bench, usable_cores

    seeds = _seed_list(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = run_bench(args.config, methods, seeds, args.out, dry_run=args.dry_run,
                     report_only=args.report_only, teacher=args.teacher,
                     overrides=[*_place_sets(args), *args.set, *_tracker_sets(args)],
                     progress=_progress(args), jobs=args.jobs or usable_cores(), gpus=args.gpus)
    if args.dry_run:
        for run in runs:
            print(f"{run['state']:>6}  {run['method']} seed {run['seed']}  -> {run['folder']}")
    else:
        print((Path(args.out) / "results.md").read_text())
    return 0


def _seed_list(text: str) -> list[int]:
    from dfkd.errors import ConfigError

    try:
        return [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--seeds expects comma-separated integers, got '{text}'") from exc


def _cmd_reproduce(args) -> int:
    from dfkd.errors import ConfigError
    from dfkd.reproduce import run_reproduce

    if not args.data_root and not (args.dry_run or args.report_only):
        raise ConfigError("--data-root DIR is required: the folder holding the official "
                          "cifar-10-batches-py/ and cifar-100-python/")
    runs = run_reproduce(args.data_root or ".", args.teachers, args.out, methods=args.methods,
                         pairs=args.pairs, seeds=_seed_list(args.seeds),
                         precision="fast" if args.fast else "fp32", gpus=args.gpus,
                         overrides=args.set, dry_run=args.dry_run,
                         report_only=args.report_only, progress=_progress(args),
                         device=args.device)
    if args.dry_run:
        for run in runs:
            print(f"{run['state']:>6}  {run['pair']}  {run['method']} seed {run['seed']}  "
                  f"-> {run['folder']}")
    else:
        print((Path(args.out) / "table.md").read_text())
    return 0


def _cmd_tune(args) -> int:
    from dfkd.recipes import resolve_named
    from dfkd.tune import run_tune

    study = run_tune(str(resolve_named(args.config)), args.teacher, args.trials, args.out,
                     overrides=[*_place_sets(args), *args.set, *_tracker_sets(args)],
                     storage=args.storage, study_name=args.study_name, seed=args.seed,
                     progress=_progress(args))
    best = study.best_trial
    print(f"best: trial {best.number}, final val Acc@1 {best.value:.2f}, {best.params}")
    signal = json.loads((Path(args.out) / "signal.json").read_text())
    rho = signal["synthetic_agreement"]
    if rho["spearman"] is not None:
        print(f"data-free signal: Spearman rank correlation of the final synthetic_agreement "
              f"with the final val Acc@1 over {rho['n']} completed trials: "
              f"{rho['spearman']:+.2f}")
    print(f"results in {args.out}/ (best.yaml, trials.csv, signal.json, search.png, study.db)")
    return 0


def _cmd_export(args) -> int:
    from dfkd.export import export_model

    _require_rebuild_flags(_model_path(args), args, needs_data=False)
    for line in export_model(_model_path(args), args.format, args.out, model_spec=args.model,
                             dataset=args.dataset, opset=args.opset, norm=args.norm):
        print(line)
    return 0


def _cmd_plot(args) -> int:
    from dfkd.report import plot_run_folders

    labels = plot_run_folders(args.runs, args.out)
    print(f"wrote {args.out} ({len(labels)} run{'s' if len(labels) > 1 else ''}: "
          f"{', '.join(labels)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"train-teacher": _cmd_train_teacher, "evaluate": _cmd_evaluate,
               "distill": _cmd_distill, "bench": _cmd_bench, "tune": _cmd_tune,
               "export": _cmd_export, "plot": _cmd_plot,
               "reproduce": _cmd_reproduce}[args.command]
    try:
        return handler(args)
    except DfkdError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dfkd: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("dfkd: interrupted", file=sys.stderr)
        return 130
    finally:
        # A run that failed is still held by its traceback's reference cycles: free it (and
        # a process group its DDP models held) now, not in interpreter teardown.
        gc.collect()
