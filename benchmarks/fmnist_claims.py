"""Which of the paper's claims hold on the Fashion-MNIST tables (issue #11).

Reads the three benches of ``benchmarks/fmnist_tables.sh`` (TABLES/clean, noise20, noise40)
and compares a CuDFKD row with every baseline, seed by seed (paired: the same seeds, the
same teacher), on each claim:

* accuracy: the final test Acc@1 with the clean teacher (higher is better);
* convergence: the wall time and the epoch at which Acc@1 first reaches 90% of its final
  value (lower is better);
* stability: the variance of Acc@1 over the run's epochs, the paper's measure (lower);
* robustness: the final Acc@1 with the noisy teachers (higher), and the loss against the
  clean teacher, clean minus noisy on each seed (lower).

Each comparison is the mean difference with its 95% t-interval: *supported* when the
interval says CuDFKD is better, *not supported* when it says the baseline is, *undecided*
when it holds 0. A claim holds against all baselines when every comparison supports it,
and fails when any comparison goes the other way; a baseline with no runs to pair with
leaves it undecided. Writes TABLES/claims.md (with the caveats of these rules) and prints it.

    python benchmarks/fmnist_claims.py --tables results/tables
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfkd.bench import compare, interval_text, seed_values
from dfkd.methods import list_methods
from dfkd.report import format_table

BASELINES = ",".join(m for m in list_methods() if m != "cudfkd")   # every registered one
TEACHERS = ("clean", "noise20", "noise40")
# claim, what is measured, the bench (teacher), the column, higher is better, and whether
# the value is the loss against the clean teacher's bench (clean minus this one, per seed)
MEASURES = [
    ("accuracy", "final Acc@1, clean teacher", "clean", "final_acc1", True, False),
    ("convergence", "seconds to 90% of final Acc@1", "clean", "seconds_to_90pct", False, False),
    ("convergence", "epochs to 90% of final Acc@1", "clean", "epochs_to_90pct", False, False),
    ("stability", "variance of Acc@1 over epochs", "clean", "acc1_var", False, False),
    *[("robustness", f"final Acc@1, teacher with {n}% flipped labels", f"noise{n}",
       "final_acc1", True, False) for n in (20, 40)],
    *[("robustness", f"Acc@1 lost to the {n}% noisy teacher (clean - noisy)", f"noise{n}",
       "final_acc1", False, True) for n in (20, 40)],
]
SUPPORTED, NOT_SUPPORTED, UNDECIDED = "supported", "not supported", "undecided"
MISSING = "no paired runs"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, UNDECIDED, MISSING)
CAVEATS = (
    "Each verdict is one comparison at 95%, not corrected for the seven baselines: if "
    "CuDFKD were no different from any of them, one of the seven would still say 'not "
    "supported' by chance up to about 16% of the time (1 - 0.975^7).",
    "Convergence and stability are measured against each run's own final Acc@1 and over "
    "all its epochs (the paper's measures), so a baseline that learns little can converge "
    "early and vary little: read them beside the accuracy rows.",
    "A difference that is the same on every seed is undecided below 6 seeds (its "
    "t-interval has zero width; dfkd.bench.SIGN_SEEDS).")


def values(tables: Path, name: str, seeds: list[int], teacher: str, column: str,
           loss: bool) -> dict[int, float]:
    """``column`` of ``name``'s runs on ``teacher``'s bench by seed, or with ``loss`` the
    clean bench's value minus that one."""
    found = seed_values(tables / teacher / name, seeds, column)
    if not loss:
        return found
    clean = seed_values(tables / "clean" / name, seeds, column)
    return {s: clean[s] - v for s, v in found.items() if s in clean}


def claims(tables: Path, first: str, baselines: list[str], seeds: list[int]
           ) -> tuple[list[list], list[list]]:
    """The rows ``first`` minus each baseline and, per measure, the verdict against all."""
    rows, overall = [], []
    for claim, what, teacher, column, higher, loss in MEASURES:
        mine = values(tables, first, seeds, teacher, column, loss)
        if not mine:
            overall.append([claim, what, len(baselines), f"no runs of {first}", UNDECIDED])
            continue
        verdicts = []
        for other in baselines:
            row = compare(first, other, mine, values(tables, other, seeds, teacher, column,
                                                     loss), higher)
            if row is None:  # a missing baseline leaves the claim undecided, never supported
                verdicts.append(MISSING)
                rows.append([claim, what, f"{first} - {other}", 0, "-", "-", MISSING])
                continue
            verdicts.append({f"{first} better": SUPPORTED, f"{other} better": NOT_SUPPORTED,
                             "undecided": UNDECIDED}[row["verdict"]])
            rows.append([claim, what, f"{first} - {other}", row["seeds"],
                         f"{row['mean_difference']:+.2f}", interval_text(row), verdicts[-1]])
        against_all = (NOT_SUPPORTED if NOT_SUPPORTED in verdicts else
                       SUPPORTED if set(verdicts) == {SUPPORTED} else UNDECIDED)
        counts = ", ".join(f"{verdicts.count(w)} {w}" for w in VERDICTS if w in verdicts)
        overall.append([claim, what, len(baselines), counts, against_all])
    return rows, overall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="results/tables", help="the folder of fmnist_tables.sh")
    p.add_argument("--first", default="cudfkd_paper,cudfkd",
                   help="the CuDFKD rows to compare, each against every baseline")
    p.add_argument("--baselines", default=BASELINES)
    p.add_argument("--seeds", default="0,1,2,3,4")
    args = p.parse_args()
    tables, seeds = Path(args.tables), [int(s) for s in args.seeds.split(",")]
    missing = [t for t in TEACHERS if not (tables / t).is_dir()]
    if missing:
        raise SystemExit(f"{tables} has no bench for {', '.join(missing)}: run "
                         "benchmarks/fmnist_tables.sh first (OUT={tables})")
    text = ["Paired differences over the same seeds, with 95% t-intervals. Supported: the "
            "interval says CuDFKD is better; not supported: it says the baseline is better; "
            "undecided: it holds 0.\n", *(f"- {c}" for c in CAVEATS), ""]
    for first in args.first.split(","):
        rows, overall = claims(tables, first, args.baselines.split(","), seeds)
        text.append(f"### {first} against each baseline\n")
        text.append(format_table(["claim", "measured as", "comparison", "seeds",
                                  "mean difference", "95% interval", "verdict"], rows))
        text.append(f"\n{first} against all baselines together:\n")
        text.append(format_table(["claim", "measured as", "baselines", "verdicts",
                                  "against all"], overall) + "\n")
    report = "\n".join(text)
    (tables / "claims.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
