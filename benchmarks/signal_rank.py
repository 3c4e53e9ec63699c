"""How well the data-free signal ranks finished runs: Spearman's rho with their real accuracy.

For every finished run (a folder with summary.json) at or below the given folders (a bench
output, a tune's trials/, single run folders), the pairs (final synthetic_agreement, final
Acc@1) and (final synthetic_loyalty, final Acc@1), Acc@1 on the run's eval_split (use
``--eval-split val`` runs when the figure chooses anything). ``dfkd tune`` writes the same
figure for its trials to ``signal.json``.

    python benchmarks/signal_rank.py runs/bench_fmnist [runs/tune_cudfkd/trials ...] [--json]
"""

from __future__ import annotations

import argparse
import json

from dfkd.probe import correlation_of_runs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="run folders, or folders holding runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    result = correlation_of_runs(args.folders)
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"{result['runs']} finished runs (eval split: {', '.join(result['eval_splits'])})")
    print("| signal | runs with it | Spearman rho with final Acc@1 |")
    print("|---|---|---|")
    for key in ("synthetic_agreement", "synthetic_loyalty"):
        rho = result[key]["spearman"]
        print(f"| final {key} | {result[key]['n']} | "
              f"{'-' if rho is None else f'{rho:+.3f}'} |")
    return result


if __name__ == "__main__":
    main()
