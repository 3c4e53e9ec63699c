"""Every ``dfkd ...`` command of README.md and docs/ runs (issue #51).

The commands are read from the fenced code blocks of the pages (``bash``, ``sh``, ``shell``,
``console``, ``text`` and plain fences; a trailing backslash continues a line, ``# comments``
are dropped). Each one runs as ``python -m dfkd`` in a fresh folder that holds the repository
as a clean clone has it (its top-level entries linked, no ``runs/``), so relative paths mean
what they mean in the docs and nothing is written into the checkout:

- ``distill``, ``train-teacher`` and ``tune`` run for real at a tiny budget (``BUDGET``; one
  epoch of ``train-teacher`` on a 2,000-image Fashion-MNIST; two trials of ``tune``);
- ``bench`` and ``reproduce`` run with ``--dry-run``;
- ``evaluate``, ``export`` and ``plot`` run as written;
- a command that needs what no test machine has (several GPUs, a tracking server) is only
  parsed, by the real parser, after its subcommand's ``--help`` runs (``parse_only_reason``).

What a command reads but the docs make elsewhere is put in its folder first: ``runs/*.pt`` is
the committed Fashion-MNIST teacher (results/tables/teacher.pt), ``--teacher NAME.onnx`` that
teacher exported to ONNX, another ``runs/...`` path a
finished run folder of a tiny ``dfkd distill`` (an interrupted one after ``--resume``),
``--teachers DIR`` a folder holding the zoo's files by the names the reproduce guide gives,
and a ``# file.py`` code block of the same page that file. Placeholders (``RECIPE.yaml``,
``ROWS``, ``...``) are replaced from ``SUBSTITUTIONS`` and ``ELLIPSIS``; an optional ``[...]``
group is left out, and a second test id (``+options``) runs the command with every group in
(the first alternative of ``[a | b]``). A placeholder no table knows fails its test.
Commands that differ only in where their inputs lie (``dfkd evaluate runs/cudfkd`` and
``dfkd evaluate runs/quickstart/cudfkd``) run once, and the later ids share the result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
COMMITTED_TEACHER = REPO / "results" / "tables" / "teacher.pt"

# --- collecting ------------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
COMMAND_LANGUAGES = {"", "bash", "sh", "shell", "console", "text"}
# `dfkd <word>`, `python -m dfkd <word>` or `torchrun ... -m dfkd <word>`, after a `$ ` prompt
COMMAND = re.compile(r"^(?:dfkd|python3? -m dfkd|torchrun\s.*?-m dfkd)\s+-{0,2}[a-z]")
CODE_FILE = re.compile(r"^#\s*([\w.-]+\.py)\s*$")


@dataclass(frozen=True)
class DocCommand:
    file: str   # relative to the repository
    line: int   # of the command's first line
    text: str   # joined across continuations, without its trailing comment

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def strip_comment(text: str) -> str:
    """A shell comment: `#` at the start of a word, to the end of the line."""
    return re.sub(r"(^|\s)#.*$", "", text).strip()


def collect(text: str, file: str) -> list[DocCommand]:
    """The dfkd commands of one Markdown page."""
    lines = text.splitlines()
    out: list[DocCommand] = []
    fence = None   # the open fence's marker, and whether its language holds commands
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match and (fence is None or match.group(1).startswith(fence[0])):
            if fence is None:
                fence = (match.group(1), match.group(2).lower() in COMMAND_LANGUAGES)
            elif not match.group(2):
                fence = None
            i += 1
            continue
        if fence is None or not fence[1]:
            i += 1
            continue
        start = i
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        line = strip_comment(line.removeprefix("$ "))
        if COMMAND.match(line):
            out.append(DocCommand(file, start + 1, line))
        i += 1
    return out


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def documented_commands() -> list[DocCommand]:
    return [c for p in doc_files() for c in collect(p.read_text(), str(p.relative_to(REPO)))]


def code_files(file: str) -> dict[str, str]:
    """The files a page defines: a ```python block whose first line is `# name.py`."""
    text = (REPO / file).read_text()
    out = {}
    for block in re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S):
        first = block.splitlines()[0] if block.strip() else ""
        if match := CODE_FILE.match(first.strip()):
            out[match.group(1)] = block
    return out


# --- from a documented command to one that runs here -----------------------------------------

# Placeholders (whole words of a command) and what they become in the test's folder.
SUBSTITUTIONS = {
    "RECIPE.yaml": "configs/fashion_mnist/cudfkd_lenet5.yaml",   # a recipe with a search:
    "ROWS": "cudfkd,dafl",
    "N": "1",
    "CKPT": "runs/teacher.pt",
    "URL": "sqlite:///shared_study.db",
    "$M": "cudfkd",
}
# `dfkd distill ...`: the flags the page's first command of the block gives.
ELLIPSIS = {
    "docs/guides/resume.md":
        "--config configs/fashion_mnist/cudfkd_lenet5.yaml --teacher runs/teacher.pt --out runs/a",
    "docs/guides/experiment-tracking.md": "--teacher runs/teacher.pt --out runs/cudfkd",
}
PLACEHOLDER = re.compile(r"^\$\w+$|^[A-Z][A-Z0-9_]*(\.\w+)?$")

# The tiny budget of a real run (config keys; the appended --set wins over the page's own).
BUDGET = ("epochs=1", "rounds=1", "g_steps=1", "kd_steps=1", "batch_size=8",
          "synthetic_probe=0", "sample_grid=0")
TUNE_TRIALS = "2"
# The zoo's teachers as the reproduce guide names them (--teachers DIR, --dry-run reads names).
ZOO_FILES = ("cifar10_resnet34.pth", "cifar10_wrn40_2.pth", "cifar100_resnet34.pth",
             "cifar100_wrn40_2.pth")
# Markers in an argv, replaced by a folder when it runs (so equal commands compare equal).
HOME, FMNIST_SMALL, CIFAR10_FAKE = "@HOME@", "@FMNIST_SMALL@", "@CIFAR10_FAKE@"
# Teacher files a page names but does not make: how the test makes them.
OWN_TEACHERS = {"mine.pt": "my_models.py"}   # make_teacher's untrained weights, CIFAR-10 sized


@dataclass
class Plan:
    argv: list[str]          # after `dfkd`, with the markers above
    parse_only: str = ""     # why the command is only parsed
    changes: tuple[str, ...] = ()   # what was added or changed to run it here


def variants(cmd: DocCommand) -> list[tuple[str, str]]:
    """(id, text): optional `[...]` groups left out, and, when there are some, all put in."""
    group = re.compile(r"\s\[([^\[\]]*)\]")
    if not group.search(cmd.text):
        return [(cmd.id, cmd.text)]
    bare = group.sub("", cmd.text)
    full = group.sub(lambda m: " " + m.group(1).split(" | ")[0], cmd.text)
    return [(cmd.id, bare), (cmd.id + "+options", full)]


def flag(argv: list[str], name: str) -> str | None:
    """The value of --name (the last one), if given."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


def replace_flag(argv: list[str], name: str, value: str) -> list[str]:
    if name not in argv:
        return [*argv, name, value]
    return [value if i and argv[i - 1] == name else a for i, a in enumerate(argv)]


def plan(file: str, text: str) -> Plan:
    if " ... " in f"{text} ":
        if file not in ELLIPSIS:
            pytest.fail(f"'...' in {file}: say in ELLIPSIS what it stands for")
        text = re.sub(r"(?<=\s)\.\.\.(?=\s|$)", ELLIPSIS[file], text)
    words = shlex.split(text)
    parse_only = ""
    if words[0] == "torchrun":
        parse_only = "torchrun with several processes (GPUs), CIFAR-10 and a zoo teacher"
    launcher = words.index("dfkd") + 1 if words[0] != "dfkd" else 1
    argv = []
    for word in words[launcher:]:
        word = SUBSTITUTIONS.get(word, word)
        if word.startswith("~/"):
            word = HOME + word[1:]
        if PLACEHOLDER.match(word) or PLACEHOLDER.match(word.split("=")[-1]):
            pytest.fail(f"placeholder {word!r} in {file}: add what it stands for to SUBSTITUTIONS")
        argv.append(word)
    parse_only = parse_only or parse_only_reason(argv)
    if parse_only:
        return Plan(argv, parse_only)
    return cheap(argv)


def parse_only_reason(argv: list[str]) -> str:
    uri = flag(argv, "--tracker-uri") or ""
    if uri.startswith(("http://", "https://")):
        return f"needs an MLflow tracking server at {uri}"
    if flag(argv, "--device") == "cuda":
        return "needs a GPU"
    if "--download" in argv:
        return "downloads a dataset"
    return ""


def in_run_folder(word: str) -> bool:
    """runs/X or a file of it, as opposed to a checkpoint file runs/X.pt."""
    path = Path(word)
    return word.startswith("runs/") and not (path.suffix in (".pt", ".safetensors") and
                                            path.parent == Path("runs"))


def cheap(argv: list[str]) -> Plan:
    """The command at a tiny budget, and what that changed."""
    sub, changes = argv[0], []
    budget = [x for kv in BUDGET for x in ("--set", kv)]
    if sub == "distill" and "--resume" not in argv:
        argv = [*argv, *budget, "--no-progress"]
        changes.append("tiny budget")
        if flag(argv, "--dataset") == "cifar10" and not flag(argv, "--data-root"):
            argv += ["--data-root", CIFAR10_FAKE]
            changes.append("made-up CIFAR-10 files (no CIFAR-10 here)")
        teacher = flag(argv, "--teacher") or ""
        if teacher in OWN_TEACHERS or in_run_folder(teacher):
            # the untrained own model, or the student of a 1-round run: near chance
            argv += ["--set", "check_teacher=false"]
            changes.append("check_teacher=false (the test's teacher is untrained)")
    elif sub == "train-teacher":
        argv = replace_flag(argv, "--epochs", "1") + ["--no-progress"]
        changes.append("1 epoch")
        if flag(argv, "--dataset") in (None, "fashion_mnist") and not flag(argv, "--data-root"):
            argv += ["--data-root", FMNIST_SMALL]
            changes.append("2,000 Fashion-MNIST training images")
    elif sub == "tune":
        argv = replace_flag(argv, "--trials", TUNE_TRIALS) + budget + ["--no-progress"]
        changes.append(f"{TUNE_TRIALS} trials at a tiny budget")
    elif sub in ("bench", "reproduce") and not {"--dry-run", "--report-only"} & set(argv):
        argv = [*argv, "--dry-run"]
        changes.append("--dry-run")
    return Plan(argv, "", tuple(changes))


# --- what a command reads --------------------------------------------------------------------

def run_dfkd(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("MLFLOW_TRACKING_URI", None)   # the docs' default: sqlite:///mlflow.db here
    return subprocess.run([sys.executable, "-m", "dfkd", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def report(argv: list[str], cwd: Path, result: subprocess.CompletedProcess) -> str:
    return (f"`dfkd {shlex.join(argv)}` in {cwd} exited {result.returncode}\n"
            f"--- stderr (tail) ---\n{result.stderr[-3000:]}\n"
            f"--- stdout (tail) ---\n{result.stdout[-1500:]}")


def tiny_run(out: Path, teacher: Path, *extra: str) -> Path:
    budget = [x for kv in BUDGET for x in ("--set", kv)]
    argv = ["distill", "--teacher", str(teacher), "--student", "lenet5_half", "--out", str(out),
            *budget, "--no-progress", *extra]
    result = run_dfkd(argv, out.parent)
    assert result.returncode == 0, report(argv, out.parent, result)
    return out


def reads(argv: list[str]) -> list[tuple[int, str, str]]:
    """(index in argv, kind, path) of what the test puts in place before a command runs:
    zoo (a --teachers folder), own (a teacher file of the page's own model), onnx (the
    committed teacher exported as NAME.onnx), teacher (the committed teacher as runs/NAME.pt),
    run or interrupted (a run folder, for a run folder or a file in one)."""
    out = []
    for i, word in enumerate(argv):
        before = argv[i - 1] if i else ""
        if before == "--out":
            continue
        if before == "--teachers":
            out.append((i, "zoo", word))
        elif before == "--teacher" and word in OWN_TEACHERS:
            out.append((i, "own", word))
        elif before == "--teacher" and word.endswith(".onnx"):
            out.append((i, "onnx", word))
        elif in_run_folder(word):
            path = Path(word)
            folder = str(path.parent) if path.suffix in (".pt", ".safetensors") else word
            out.append((i, "interrupted" if before == "--resume" else "run", folder))
        elif word.startswith("runs/"):
            out.append((i, "teacher", word))
    return out


def same_run_key(p: Plan, files: dict[str, str]) -> tuple:
    """Commands that differ only in where their inputs lie (runs/a or runs/cudfkd, both the
    same run folder) run once."""
    argv = list(p.argv)
    for i, kind, path in reads(argv):
        if kind != "own":
            argv[i] = argv[i].replace(path, f"<{kind}>", 1)
    return (bool(p.parse_only), tuple(argv), tuple(sorted(files.items())))


class Materials:
    """What the commands read, each made once, when a command first needs it."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory

    @cached_property
    def teacher(self) -> Path:
        assert COMMITTED_TEACHER.is_file(), "results/tables/teacher.pt is committed"
        path = self.factory.mktemp("doc_teacher") / "teacher.pt"
        shutil.copy(COMMITTED_TEACHER, path)
        return path

    @cached_property
    def finished_run(self) -> Path:
        return tiny_run(self.factory.mktemp("doc_finished") / "run", self.teacher)

    @cached_property
    def interrupted_run(self) -> Path:
        return tiny_run(self.factory.mktemp("doc_interrupted") / "run", self.teacher,
                        "--set", "epochs=2", "--stop-after-epoch", "1")

    @cached_property
    def fmnist_small(self) -> Path:
        """The first 2,000 training and 1,000 test images, as IDX files."""
        import gzip
        import struct

        if not FMNIST.is_dir():
            pytest.skip(f"Fashion-MNIST is not in {FMNIST}")
        root = self.factory.mktemp("doc_fmnist")
        for split, n in (("train", 2000), ("t10k", 1000)):
            for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
                name = f"{split}-{kind}-ubyte.gz"
                raw = gzip.decompress((FMNIST / name).read_bytes())
                head = bytearray(raw[:header])
                head[4:8] = struct.pack(">I", n)
                size = 28 * 28 if kind.startswith("images") else 1
                data = bytes(head) + raw[header:header + n * size]
                (root / name).write_bytes(gzip.compress(data, compresslevel=1))
        return root

    @cached_property
    def cifar10_fake(self) -> Path:
        from cifar_files import random_cifar

        root = self.factory.mktemp("doc_cifar10")
        random_cifar(root, 10, n_train=200, n_test=100)
        return root

    def workspace(self, path: Path) -> Path:
        """A folder with the repository's top-level entries linked in, without runs/."""
        path.mkdir()
        for entry in REPO.iterdir():
            if entry.name.startswith(".") or entry.name in ("runs", "mlruns", "mlflow.db",
                                                            "wandb"):
                continue
            (path / entry.name).symlink_to(entry)
        return path

    def concrete(self, argv: list[str], ws: Path) -> list[str]:
        marks = {HOME: lambda: str(ws / "home"), FMNIST_SMALL: lambda: str(self.fmnist_small),
                 CIFAR10_FAKE: lambda: str(self.cifar10_fake)}
        out = []
        for word in argv:
            for mark, value in marks.items():
                if mark in word:
                    word = word.replace(mark, value())
            out.append(word)
        return out

    def provide(self, argv: list[str], ws: Path, files: dict[str, str]) -> None:
        """Put what the command reads into its folder."""
        for name, code in files.items():
            (ws / name).write_text(code)
        for _, kind, word in reads(argv):
            target = ws / word
            if target.exists():
                continue
            if REPO in target.resolve().parents:
                pytest.fail(f"{word} would be made inside the checkout")
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "zoo":
                target.mkdir()
                for name in ZOO_FILES:
                    (target / name).write_bytes(b"")
            elif kind == "own":
                self.own_teacher(ws / OWN_TEACHERS[word], target)
            elif kind == "onnx":
                from dfkd.export import export_model

                export_model(self.teacher, "onnx", target, keep_batchnorm=True)
            elif kind == "teacher":
                shutil.copy(self.teacher, target)
            else:
                run = self.interrupted_run if kind == "interrupted" else self.finished_run
                shutil.copytree(run, target)

    @staticmethod
    def own_teacher(module_file: Path, target: Path) -> None:
        import torch

        spec = importlib.util.spec_from_file_location("doc_own_models", module_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        torch.save(module.make_teacher(num_classes=10, in_channels=3).state_dict(), target)


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> Materials:
    return Materials(tmp_path_factory)


# --- the tests -------------------------------------------------------------------------------

COMMANDS = documented_commands()
CASES = [(c, vid, text) for c in COMMANDS for vid, text in variants(c)]
EXTRAS = {"tune": ("optuna",), "plot": ("matplotlib",)}
TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# same_run_key -> (the first test id that ran it, its failure or "")
_RESULTS: dict[tuple, tuple[str, str]] = {}


def needed_modules(argv: list[str]) -> list[str]:
    mods = list(EXTRAS.get(argv[0], ()))
    if argv[0] == "export" and flag(argv, "--format") == "onnx":
        mods += ["onnx", "onnxruntime", "onnxscript"]
    mods += [TRACKER_MODULES.get(t, t) for b, t in zip(argv, argv[1:]) if b == "--tracker"]
    return mods


def parse_error(argv: list[str]) -> str:
    """What the real parser says against `dfkd ARGV`; empty when it takes it."""
    from dfkd.commands import parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser().parse_args(argv)
    except SystemExit as exc:
        return (f"the parser refuses `dfkd {shlex.join(argv)}` (exit {exc.code}):\n"
                f"{err.getvalue()}")
    return ""


def check_parses(p: Plan, ws: Path) -> str:
    """--help of the subcommand runs, the real parser takes the arguments, and a --config
    names a file of the repository."""
    result = run_dfkd([p.argv[0], "--help"], ws)
    if result.returncode != 0:
        return report([p.argv[0], "--help"], ws, result)
    if error := parse_error(p.argv):
        return error
    config = flag(p.argv, "--config")
    if config and not (REPO / config).is_file():
        return f"`dfkd {shlex.join(p.argv)}`: --config {config} is not in the repository"
    return ""


def check_runs(p: Plan, ws: Path, materials: Materials, files: dict[str, str]) -> str:
    argv = materials.concrete(p.argv, ws)
    out = flag(argv, "--out")
    if out and REPO in (ws / out).resolve().parents:
        return f"`dfkd {shlex.join(argv)}` would write {out} inside the checkout: not run"
    materials.provide(argv, ws, files)
    result = run_dfkd(argv, ws)
    if result.returncode != 0:
        return report(argv, ws, result)
    if out and not {"--dry-run", "--report-only"} & set(argv) and not (ws / out).exists():
        return f"`dfkd {shlex.join(argv)}` exited 0 but wrote no {out}"
    if "--json" in argv:
        json.loads(result.stdout)
    return ""


@pytest.mark.parametrize(("cmd", "text"), [pytest.param(c, t, id=vid) for c, vid, t in CASES])
def test_documented_command_runs(cmd: DocCommand, text: str, materials: Materials, tmp_path):
    p = plan(cmd.file, text)
    missing = [m for m in needed_modules(p.argv) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (an extra of dfkd)")
    files = code_files(cmd.file)
    key = same_run_key(p, files)
    if key not in _RESULTS:
        ws = materials.workspace(tmp_path / "ws")
        failure = check_parses(p, ws) if p.parse_only else check_runs(p, ws, materials, files)
        _RESULTS[key] = (cmd.id, failure)
    first, failure = _RESULTS[key]
    how = f"parsed only: {p.parse_only}" if p.parse_only else ", ".join(p.changes) or "as written"
    if failure:
        same = f" (run once, as {first})" if first != cmd.id else ""
        pytest.fail(f"{cmd.id}{same}: `{cmd.text}` ({how}) fails:\n{failure}", pytrace=False)


def test_collector_finds_the_documented_commands():
    texts = {(c.file, c.text) for c in COMMANDS}
    assert len(COMMANDS) >= 40, len(COMMANDS)
    for command in (   # README's short tour
            "dfkd train-teacher --dataset fashion_mnist --model lenet5 --epochs 10 "
            "--out runs/teacher.pt",
            "dfkd distill --teacher runs/teacher.pt --student lenet5_half --method cudfkd "
            "--out runs/cudfkd",
            "dfkd distill --resume runs/cudfkd",
            "dfkd evaluate runs/cudfkd",
            "dfkd bench --config configs/fashion_mnist/bench.yaml --seeds 0,1,2 --out runs/bench "
            "--methods cudfkd,cudfkd_paper,dafl,dfq,deepinv,cmi,fast,scratch,kd_with_data "
            "--jobs 2"):
        assert ("README.md", command) in texts, command
    from dfkd.commands import parser

    names = set(next(a for a in parser()._actions
                     if isinstance(a, argparse._SubParsersAction)).choices)
    used = {plan(c.file, t).argv[0] for c in COMMANDS for _, t in variants(c)}
    assert names <= used, names - used   # every subcommand is documented and tested
    assert {c.file for c in COMMANDS} >= {"README.md", "docs/getting-started.md",
                                          "docs/guides/student.md"}


def test_collector_reads_fences_prompts_continuations_and_comments():
    page = "\n".join([
        "dfkd evaluate not-in-a-fence",
        "```bash",
        "dfkd distill --teacher t.pt \\",
        "    --out runs/a   # a comment",
        "pip install dfkd",
        "```",
        "```python",
        "dfkd.distill(teacher)",
        "```",
        "  ```console",
        "  $ dfkd evaluate runs/a",
        "  lenet5_half on fashion_mnist test: Acc@1 85%",
        "  ```",
        "````",
        "```",
        "dfkd plot runs/a --out c.png",
        "```",
        "````",
        "```text",
        "dfkd: error: no teacher given",
        "torchrun --nproc_per_node=2 -m dfkd distill --resume runs/a",
        "```",
    ])
    assert [(c.line, c.text) for c in collect(page, "x.md")] == [
        (3, "dfkd distill --teacher t.pt --out runs/a"),
        (11, "dfkd evaluate runs/a"),
        (16, "dfkd plot runs/a --out c.png"),
        (21, "torchrun --nproc_per_node=2 -m dfkd distill --resume runs/a"),
    ]


def test_placeholders_and_budgets():
    bench = DocCommand("docs/guides/bench.md", 4,
                       "dfkd bench --config b.yaml --out runs/bench [--methods ROWS] "
                       "[--dry-run | --report-only]")
    (_, bare), (_, full) = variants(bench)
    assert plan(bench.file, bare).argv == ["bench", "--config", "b.yaml", "--out", "runs/bench",
                                           "--dry-run"]
    assert plan(bench.file, full).argv == ["bench", "--config", "b.yaml", "--out", "runs/bench",
                                           "--methods", "cudfkd,dafl", "--dry-run"]
    p = plan("README.md", "dfkd train-teacher --epochs 10 --out runs/teacher.pt")
    assert flag(p.argv, "--epochs") == "1" and flag(p.argv, "--data-root") == FMNIST_SMALL
    p = plan("README.md", "dfkd reproduce --teachers ~/zoo --gpus 4 --out runs/r")
    assert p.argv[2] == HOME + "/zoo" and p.argv[-1] == "--dry-run" and not p.parse_only
    assert plan("README.md", "torchrun --nproc_per_node=4 -m dfkd distill --out r").parse_only
    with pytest.raises(pytest.fail.Exception, match="SUBSTITUTIONS"):
        plan("README.md", "dfkd evaluate CHECKPOINT")
    assert parse_error(["distill", "--resume", "runs/a"]) == ""
    assert "--tracker-url" in parse_error(["distill", "--tracker-url", "http://h:5000"])
    assert "invalid choice" in parse_error(["export", "runs/a", "--format", "tflite", "--out", "x"])
