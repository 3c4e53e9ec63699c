"""Write docs/results.md and its figures, and docs/which-method.md, from the committed runs in
results/tables (and the CIFAR cost projections in results/cifar_costs_cpu*.json).

    python benchmarks/results_page.py                      # docs/results.md, docs/img/*.png
    python benchmarks/results_page.py --check              # exit 1 if docs/results.md is stale

The page is made from data alone: each teacher's bench aggregate (``results.json``, written
by ``dfkd bench``), the per-epoch metrics of every run (``metrics.jsonl``), each run's
``summary.json`` (the teacher's accuracy) and the claims' verdicts (``claims.md``, written by
``benchmarks/fmnist_claims.py``). The figures are drawn with matplotlib's Agg backend at a
fixed size and dpi, without the PNG's software/date metadata, so the same data and the same
matplotlib give the same bytes. tests/test_docs.py checks that the committed page equals what
this script makes from the committed data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (folder under results/tables, the title of its section)
TEACHERS = [
    ("clean", "Clean teacher"),
    ("noise20", "Teacher trained with 20% of its labels flipped"),
    ("noise40", "Teacher trained with 40% of its labels flipped"),
]

# Row order and the name a reader knows each row by.
LABELS = {
    "cudfkd": "CuDFKD, dfkd's recipe",
    "cudfkd_paper": "CuDFKD, the paper's method",
    "cmi": "CMI",
    "fast": "Fast",
    "nayer": "NAYER",
    "adadfkd": "AdaDFKD",
    "spaceshipnet": "SpaceshipNet",
    "deepinv": "DeepInversion/ADI",
    "dfq": "DFQ",
    "dafl": "DAFL",
    "zskt": "ZSKT",
    "dfad": "DFAD",
    "dfme": "DFME (black box)",
    "scratch": "real data, from scratch",
    "kd_with_data": "real data, KD from the teacher",
}
REFERENCES = ("scratch", "kd_with_data")
DATA_FREE = [name for name in LABELS if name not in REFERENCES]

# Fixed colours per method, so a method looks the same in every figure.
COLOURS = {
    "cudfkd": "#d62728", "cudfkd_paper": "#ff7f0e", "cmi": "#1f77b4", "fast": "#2ca02c",
    "deepinv": "#9467bd", "dfq": "#8c564b", "dafl": "#e377c2", "zskt": "#7f7f7f",
    "dfad": "#bcbd22", "scratch": "#17becf", "kd_with_data": "#000000",
    "nayer": "#393b79", "adadfkd": "#e6550d", "spaceshipnet": "#31a354", "dfme": "#843c39",
}

# Where the runs ran: not in the data (a run records its device, not the CPU model), so it
# is written here, from the notes kept beside the tables when they were made.
HARDWARE = (
    "Every run ran on the CPU of a 2-core virtual machine (PyTorch 2.13.0, CPU build), one "
    "run per core with 1 thread, one or two runs at a time. The machines were of two CPU "
    "models, an Intel Xeon and an AMD EPYC: the `cudfkd` and `cudfkd_paper` rows of all three "
    "teachers, and the `cmi`, `fast` and `dafl` rows of the 20% teacher, ran on the Intel Xeon; "
    "the other rows of the 20% and 40% teachers on the AMD EPYC; the clean teacher's other rows "
    "on VMs of either model; the `nayer`, `adadfkd` and `spaceshipnet` rows of all three "
    "teachers (added 2026-12-07) and the `dfme` rows (added 2026-12-08) on the AMD EPYC. The "
    "same run can end up to about 1.4 points apart on the two models, so a pair of rows from "
    "two machines carries that much machine noise, and seconds compare only roughly between "
    "rows."
)

FIGURES = {
    "epochs": "img/results_acc_epochs.png",
    "seconds": "img/results_acc_seconds.png",
    "compute": "img/results_acc_compute.png",
}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dirs(tables: Path, teacher: str, method: str) -> list[Path]:
    """The finished runs of one row (a ``seedN`` folder with a summary or a result)."""
    folder = tables / teacher / method
    if not folder.is_dir():
        return []
    runs = [d for d in folder.iterdir() if d.name.startswith("seed")
            and ((d / "summary.json").exists() or (d / "result.json").exists())]
    return sorted(runs, key=lambda d: int(d.name[4:]))


def teacher_acc1(tables: Path, teacher: str) -> float:
    """The teacher's test Acc@1, as its runs recorded it (all runs agree)."""
    for method in LABELS:
        for run in run_dirs(tables, teacher, method):
            name = "summary.json" if (run / "summary.json").exists() else "result.json"
            return float(read_json(run / name)["teacher_acc1"])
    raise SystemExit(f"no finished run under {tables / teacher}")


def fmt(mean: float, std: float, ci: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f} [±{ci:.{digits}f}]"


def cell(row: dict, key: str, digits: int) -> str:
    if row.get(key) is None:
        return "-"
    return fmt(row[key], row[f"{key}_std"], row[f"{key}_ci95"], digits)


def ordered_rows(aggregate: dict) -> list[dict]:
    by_name = {row["method"]: row for row in aggregate["methods"]}
    return [by_name[name] for name in LABELS if name in by_name]


def bench_table(aggregate: dict) -> list[str]:
    lines = [
        "| method | seeds | Acc@1 (test) | Agreement@1 | loyalty (official) | "
        "Acc@1 variance over epochs | epochs to 90% | synthesis s | student s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ordered_rows(aggregate):
        name = row["method"]
        lines.append(
            f"| {LABELS[name]} (`{name}`) | {row['seeds']} | {cell(row, 'final_acc1', 2)} | "
            f"{cell(row, 'final_agreement', 2)} | {cell(row, 'final_loyalty_official', 3)} | "
            f"{cell(row, 'acc1_var', 1)} | {cell(row, 'epochs_to_90pct', 1)} | "
            f"{cell(row, 'synthesis_seconds', 0)} | {cell(row, 'student_seconds', 0)} |")
    return lines


def parse_md_table(lines: list[str]) -> list[list[str]]:
    """The body rows of the first markdown table in ``lines`` (header and rule dropped)."""
    rows, started = [], False
    for line in lines:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows[2:]


def read_claims(path: Path) -> dict[str, dict]:
    """For each CuDFKD row of claims.md: its per-baseline comparisons and its verdicts
    against all baselines, keyed by (claim, measured as)."""
    lines = path.read_text().splitlines()
    out: dict[str, dict] = {}
    for first in ("cudfkd_paper", "cudfkd"):
        each = lines.index(f"### {first} against each baseline")
        together = lines.index(f"{first} against all baselines together:")
        comparisons = parse_md_table(lines[each + 1:])
        verdicts = parse_md_table(lines[together + 1:])
        out[first] = {
            "comparisons": comparisons,
            "all": {(r[0], r[1]): r[4] for r in verdicts},
        }
    return out


def verdict_cell(claims: dict, first: str, claim: str, measured: str) -> str:
    """The verdict against all baselines, with the comparisons that decided against CuDFKD."""
    verdict = claims[first]["all"][(claim, measured)]
    against = [f"{r[2].split(' - ')[1]} {r[4]} {r[5]}" for r in claims[first]["comparisons"]
               if r[0] == claim and r[1] == measured and r[6] == "not supported"]
    text = f"**{verdict}**"
    if against:
        text += ": baseline better: " + ", ".join(against)
    return text


def claims_table(claims: dict) -> list[str]:
    lines = [
        "| claim | measured as | `cudfkd_paper` (the paper's method) | `cudfkd` (dfkd's recipe) |",
        "|---|---|---|---|",
    ]
    for claim, measured in claims["cudfkd_paper"]["all"]:
        lines.append(f"| {claim} | {measured} | "
                     f"{verdict_cell(claims, 'cudfkd_paper', claim, measured)} | "
                     f"{verdict_cell(claims, 'cudfkd', claim, measured)} |")
    return lines


def advice(tables: Path, teacher: str = "clean") -> str:
    """One sentence from a teacher's runs: the most accurate method, the methods level with
    it (paired 95% interval of the final Acc@1 holding 0), and the cheapest of those in
    training seconds."""
    from dfkd.bench import compare, seed_values

    seeds = list(range(10))
    rows = {row["method"]: row for row in read_json(tables / teacher / "results.json")["methods"]}
    names = [m for m in DATA_FREE if m in rows]
    accs = {m: seed_values(tables / teacher / m, seeds, "final_acc1") for m in names}
    best = max(names, key=lambda m: rows[m]["final_acc1"])
    level = [m for m in names if m == best or
             compare(best, m, accs[best], accs[m])["verdict"] == "undecided"]

    def seconds(m: str) -> float:
        return rows[m]["synthesis_seconds"] + rows[m]["student_seconds"]

    def name(m: str) -> str:   # "CuDFKD, dfkd's recipe" -> "CuDFKD (dfkd's recipe)"
        head, _, rest = LABELS[m].partition(", ")
        return f"{head} ({rest})" if rest else head

    cheapest = min(level, key=seconds)
    others = [name(m) for m in level if m != best]
    text = f"for accuracy, {name(best)} ({rows[best]['final_acc1']:.2f}% test Acc@1)"
    text += (f", level within the paired 95% intervals with {', '.join(others)}" if others
             else ", ahead of every other method on the paired 95% intervals")
    if cheapest == best:
        return text + f"; for time, the same: it trains in {seconds(best):.0f} s."
    return (text + f"; for time, {name(cheapest)}, the cheapest of those: "
            f"{seconds(cheapest):.0f} s of training against {seconds(best):.0f} s.")


def render_page(tables: Path) -> str:
    claims = read_claims(tables / "claims.md")
    comparisons = sum(len(claims[first]["comparisons"]) for first in claims)
    baselines = len({r[2] for r in claims["cudfkd"]["comparisons"]})
    out = [
        "# Results",
        "",
        "<!-- Generated by `python benchmarks/results_page.py` from `results/tables`; "
        "do not edit by hand. -->",
        "",
        "**Which method on this pair** (Fashion-MNIST, LeNet-5 -> LeNet-5-half, clean "
        "teacher, below): " + advice(tables),
        "",
        "Every data-free method of dfkd on one pair, Fashion-MNIST, a LeNet-5 teacher and a "
        "LeNet-5-half student (about 16K parameters), at one budget: 10 epochs of 800 student "
        "steps of 64 synthetic images (each recipe's rounds x student steps per round is 800; "
        "its generator steps per round are its own). Each method runs its recipe from "
        "`configs/fashion_mnist/`, every one tuned on the **val** split with the same 8 trials "
        "of 10 epochs (`dfkd tune`). The figures are the **final** epoch's student, measured "
        "on the test set, which chose nothing. Two CuDFKD rows: `cudfkd_paper` is the paper's "
        "method tuned like every baseline (the fair comparison), `cudfkd` is dfkd's recipe "
        "(the paper's method plus additions chosen on val at this budget). The references "
        "train the same student on the real `train` split.",
        "",
        "Each cell is mean ± sample std over seeds [± half-width of the 95% t-interval of the "
        "mean]. The runs, their per-epoch metrics and their configs are committed under "
        "`results/tables/`; each table's own `results.md` there has every column and the "
        "paired differences.",
        "",
        "```bash",
        "JOBS=2 bash benchmarks/fmnist_tables.sh                    # the three benches, then "
        "the claims",
        "python benchmarks/fmnist_claims.py --tables results/tables # results/tables/claims.md",
        "python benchmarks/results_page.py                          # this page and its figures",
        "```",
        "",
        "**Hardware.** " + HARDWARE,
        "",
    ]
    for teacher, title in TEACHERS:
        aggregate = read_json(tables / teacher / "results.json")
        acc = teacher_acc1(tables, teacher)
        out += [f"## {title} ({acc:.2f}% test)", ""]
        out += bench_table(aggregate)
        out.append("")
    out += [
        "## Which of the paper's claims hold here",
        "",
        "Each claim is a **paired** comparison, CuDFKD minus one baseline on the same seeds "
        "and teacher, with the 95% t-interval of the mean difference: *supported* when the "
        "interval says CuDFKD is better, *not supported* when it says the baseline is better, "
        f"*undecided* when it holds 0. Against all {baselines} baselines a claim is supported "
        "only if every comparison supports it, and not supported as soon as one goes the "
        "other way. Lower is better for seconds, epochs, variance and accuracy lost. Each "
        f"comparison is at 95%, not corrected for the {baselines} baselines. All "
        f"{comparisons} comparisons: `results/tables/claims.md`.",
        "",
    ]
    out += claims_table(claims)
    out += [
        "",
        "On this pair none of the paper's four claims (accuracy, fastest convergence, "
        "stability, robustness to a noisy teacher) holds for CuDFKD. `BENCHMARKS.md`, in the "
        "repository, says how firm each verdict is. The "
        "paper's claims are on CIFAR-10/100 and Tiny-ImageNet with ResNet and WRN pairs "
        "over 250-500 epochs on a GPU.",
        "",
        "## Figures",
        "",
        "Acc@1 (test) against the epoch, per method: the line is the mean over seeds, the "
        "band the lowest and highest seed.",
        "",
        f"![Acc@1 against epochs]({FIGURES['epochs']})",
        "",
        "Acc@1 against the wall-clock seconds of training (synthesis + student steps, "
        "cumulative, on a log scale; evaluation left out), mean over seeds with the same "
        "band. Seconds "
        "depend on the machine (above).",
        "",
        f"![Acc@1 against seconds]({FIGURES['seconds']})",
        "",
        "Cost against quality: the final Acc@1 against the total compute of a run, synthesis "
        "+ student seconds (mean over seeds; the bars are the seeds' sample std). The references "
        "train on real data and have no synthesis.",
        "",
        f"![Acc@1 against total compute]({FIGURES['compute']})",
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# Which method

# The CPU step timings of every official CIFAR-10 R34 -> R18 recipe, projected over the recipe
# (benchmarks/cifar_costs.py); each file times Fast-2 in the same command as its yardstick.
COSTS = sorted((ROOT / "results").glob("cifar_costs_cpu*.json"))


def cost_ratios(files: list[Path]) -> dict[str, float]:
    """Each row's projected CPU hours over Fast-2's in the same file (the sessions' CPUs ran
    at different speeds; the ratio to the yardstick timed beside it compares across them)."""
    ratios: dict[str, float] = {}
    for path in files:
        rows = {r["row"]: r["projected_hours"] for r in read_json(path)["rows"]}
        for row, hours in rows.items():
            if row != "fast":
                ratios[row] = hours / rows["fast"]
    return dict(sorted(ratios.items(), key=lambda item: item[1]))


def blackbox_advice(tables: Path) -> list[str]:
    """The which-method section for a teacher that can only be queried: what the black-box
    methods reached with the clean teacher, beside the most accurate method."""
    from dfkd.methods import get_method, list_methods

    rows = {r["method"]: r for r in read_json(tables / "clean" / "results.json")["methods"]}
    boxes = [m for m in list_methods() if not get_method(m).needs_white_box and m in rows]
    if not boxes:
        return []
    best = max((m for m in DATA_FREE if m in rows), key=lambda m: rows[m]["final_acc1"])
    reached = ", ".join(
        f"`{m}` {rows[m]['final_acc1']:.2f}% ({rows[m]['seeds']} seeds, "
        f"{rows[m]['teacher_queries']:,.0f} queries a run)" for m in boxes)
    return [
        "## A teacher you can only query",
        "",
        "An ONNX file that onnx2torch converts is a white-box teacher: every method above runs "
        "on it. A graph the converter cannot take, or a service that only answers queries, is "
        "a black box, and only " + ", ".join(f"`{m}`" for m in boxes) + " learns from one "
        "(with no `--method`, a black box gets it). With the clean teacher, used through its "
        f"answers only: {reached}, against {rows[best]['final_acc1']:.2f}% for "
        f"{LABELS[best]} with the teacher's gradients and BatchNorm statistics "
        "([a teacher as ONNX or a service](guides/onnx-and-services.md)).",
        "",
    ]


def which_method_page(tables: Path) -> str:
    from dfkd.methods import bn_free_methods
    from dfkd.recipes import BN_FREE_METHOD
    from dfkd.reproduce import label

    ratios = cost_ratios(COSTS)
    costs = ", ".join(f"{label(row)} {ratio:.1f}x" for row, ratio in ratios.items())
    out = [
        "# Which method?",
        "",
        "<!-- Generated by `python benchmarks/results_page.py` from `results/tables` and "
        "`results/cifar_costs_cpu*.json`; do not edit by hand. -->",
        "",
        "From what dfkd has measured, with the intervals: one small pair (Fashion-MNIST, a "
        "LeNet-5 teacher and a LeNet-5-half student, every method tuned on val with the same "
        "8 trials, 5 or 3 seeds, on CPUs; the [results](results.md) have the tables), and each "
        "method's cost at CIFAR scale. \"Level\" means the paired 95% interval of the "
        "difference in final test Acc@1 holds 0: the data cannot tell the two apart. On "
        "another pair the order can change; on the CIFAR pairs of the papers, `dfkd "
        "reproduce` measures it ([reproducing the CIFAR tables](guides/reproduce-cifar.md)).",
        "",
        "## A teacher you trust",
        "",
        "With the clean teacher (" f"{teacher_acc1(tables, 'clean'):.2f}% test): "
        + advice(tables, "clean"),
        "",
        "## A teacher trained on noisy labels",
        "",
    ]
    for teacher, title in TEACHERS[1:]:
        out += [f"- {title} ({teacher_acc1(tables, teacher):.2f}% test): "
                + advice(tables, teacher), ""]
    out += [
        "## A teacher without BatchNorm",
        "",
        "The methods that read no BatchNorm statistics run on any teacher: "
        + ", ".join(f"`{m}`" for m in bn_free_methods())
        + f". With no `--method`, such a teacher gets `{BN_FREE_METHOD}`, and the run says "
        "so. Every method with a BatchNorm term also runs with that term off "
        "(`--set METHOD.w_bn=0`); one without BatchNorm otherwise stops before training, "
        "with that line. `BENCHMARKS.md` (\"Any model a user brings\") has what the default "
        "reached under a LayerNorm and a GroupNorm teacher.",
        "",
        *blackbox_advice(tables),
        "## A CPU or a GPU",
        "",
        "On a CPU, Fashion-MNIST-sized pairs take minutes to an hour (the seconds of the "
        "[results](results.md), 1 thread of a 2-core VM per run); a CIFAR recipe does not fit "
        "a CPU. Each official CIFAR-10 ResNet-34 "
        "-> ResNet-18 recipe's projected CPU time, over Fast-2's timed beside it "
        f"(`benchmarks/cifar_costs.py`): {costs}. The ratios rank the recipes' costs; "
        "GPU hours need not keep these proportions, and dfkd has timed one recipe on a GPU "
        "so far, CuDFKD's ([reproduce guide](guides/reproduce-cifar.md#what-it-costs)).",
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# Figures


def curves(tables: Path, teacher: str, method: str) -> list[list[dict]]:
    return [read_metrics(run / "metrics.jsonl") for run in run_dirs(tables, teacher, method)
            if (run / "metrics.jsonl").exists()]


def band(runs: list[list[dict]], x_key: str | None) -> tuple[list, list, list, list]:
    """x (epoch, or the mean of ``x_key`` over seeds), and the mean, min and max Acc@1 over
    seeds at each epoch that every seed reached."""
    epochs = min(len(run) for run in runs)
    xs, mean, low, high = [], [], [], []
    for i in range(epochs):
        accs = [run[i]["acc1"] for run in runs]
        xs.append(run_mean([run[i][x_key] for run in runs]) if x_key else runs[0][i]["epoch"])
        mean.append(run_mean(accs))
        low.append(min(accs))
        high.append(max(accs))
    return xs, mean, low, high


def run_mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def sample_std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = run_mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def run_cost(run: Path) -> tuple[float, float]:
    """(synthesis + student seconds, final Acc@1) of one run; a reference has no synthesis."""
    if (run / "summary.json").exists():
        summary = read_json(run / "summary.json")
        return summary["synthesis_seconds"] + summary["student_seconds"], summary["final_acc1"]
    result = read_json(run / "result.json")
    return result["student_seconds"], result["final_acc1"]


def draw_curves(tables: Path, path: Path, x_key: str | None, xlabel: str,
                log_x: bool = False) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEACHERS), figsize=(15, 4.6), sharey=True)
    for ax, (teacher, title) in zip(axes, TEACHERS):
        for method in DATA_FREE:
            runs = curves(tables, teacher, method)
            if not runs:
                continue
            xs, mean, low, high = band(runs, x_key)
            colour = COLOURS[method]
            ax.plot(xs, mean, color=colour, label=f"{method} ({len(runs)})", linewidth=1.6)
            ax.fill_between(xs, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.set_title(f"{title.replace('Teacher trained with', 'teacher,')}", fontsize=10)
        ax.set_xlabel(xlabel)
        if log_x:  # CMI's synthesis takes 10x the others' seconds
            ax.set_xscale("log")
        ax.set_ylim(0, 95)
        ax.grid(alpha=0.3, which="both" if log_x else "major")
    axes[0].set_ylabel("Acc@1, test (%)")
    axes[-1].legend(fontsize=8, loc="lower right", title="method (seeds)", title_fontsize=8)
    save(fig, path)


def draw_compute(tables: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TEACHERS), figsize=(15, 4.6), sharey=True)
    for ax, (teacher, title) in zip(axes, TEACHERS):
        for method in LABELS:
            runs = [run_cost(run) for run in run_dirs(tables, teacher, method)]
            if not runs:
                continue
            totals, accs = [t for t, _ in runs], [a for _, a in runs]
            marker = "s" if method in REFERENCES else "o"
            ax.errorbar(run_mean(totals), run_mean(accs), xerr=sample_std(totals),
                        yerr=sample_std(accs), fmt=marker, color=COLOURS[method], capsize=3,
                        label=method)
        ax.set_xscale("log")
        ax.set_title(title.replace("Teacher trained with", "teacher,"), fontsize=10)
        ax.set_xlabel("synthesis + student seconds per run (log)")
        ax.set_ylim(0, 95)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("final Acc@1, test (%)")
    axes[-1].legend(fontsize=8, loc="lower left", ncol=2)
    save(fig, path)


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # no Software/date metadata: the same data and matplotlib give the same bytes
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def draw_figures(tables: Path, docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcdefaults()
    plt.rcParams["svg.hashsalt"] = "dfkd"
    paths = {key: docs / rel for key, rel in FIGURES.items()}
    draw_curves(tables, paths["epochs"], None, "epoch")
    draw_curves(tables, paths["seconds"], "elapsed_seconds",
                "training seconds, cumulative (log)", log_x=True)
    draw_compute(tables, paths["compute"])
    return list(paths.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=Path, default=ROOT / "results" / "tables",
                        help="the committed runs (default: results/tables)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="where results.md and img/ go (default: docs)")
    parser.add_argument("--no-figures", action="store_true",
                        help="write the page only (no matplotlib needed)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the page differs from what the data make")
    args = parser.parse_args(argv)
    pages = {args.docs / "results.md": render_page(args.tables),
             args.docs / "which-method.md": which_method_page(args.tables)}
    if args.check:
        stale = [t for t, page in pages.items() if not t.exists() or t.read_text() != page]
        for target in pages:
            state = "stale: run benchmarks/results_page.py" if target in stale else "up to date"
            print(f"{target}: {state}")
        return 1 if stale else 0
    for target, page in pages.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)
        print(f"wrote {target}")
    if not args.no_figures:
        for path in draw_figures(args.tables, args.docs):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
