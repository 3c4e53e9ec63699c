"""dfkd distill: a data-free distillation run, new or resumed."""

from __future__ import annotations

import argparse

from dfkd.commands.flags import NORM_HELP, common, place_sets, progress, tracker_flags, tracker_sets
from dfkd.methods import list_methods
from dfkd.models import SPEC_HELP, list_models


def add_parser(sub) -> argparse.ArgumentParser:
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
                        "folder, its student.pt or student.safetensors), a zoo file with "
                        "--teacher-model, or an ONNX file (model.onnx: converted to PyTorch, "
                        "or used as a black box with --teacher-blackbox); with "
                        "--teacher-blackbox also path/to/file.py:answer, a function that "
                        "answers a batch of pixels in [0, 1] with probabilities or logits")
    d.add_argument("--teacher-blackbox", action="store_true", default=None,
                   help="use the teacher through its answers only (ONNX Runtime for an .onnx "
                        "file): for graphs the converter cannot take, and services. Only dfme "
                        "learns from a black box, and it is the default method for one")
    d.add_argument("--query-budget", type=int, metavar="N",
                   help="end the run once the teacher has answered N training queries "
                        "(images), before a round that would go past it; every run counts "
                        "them (teacher_queries in metrics.jsonl and summary.json). With "
                        "--resume, a larger N continues a run that spent its budget")
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
    tracker_flags(d, "each epoch's metrics")
    common(d)
    return d


def handle(args) -> int:
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
            ("--teacher-blackbox", args.teacher_blackbox),
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
                    parse_overrides([*place_sets(args), *args.set, *tracker_sets(args)]))
        if args.query_budget is not None:
            raw["query_budget"] = args.query_budget
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
                 "tracker_uri": args.tracker_uri, "teacher_blackbox": args.teacher_blackbox,
                 "query_budget": args.query_budget}
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
                                progress=progress(args), state=state,
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
