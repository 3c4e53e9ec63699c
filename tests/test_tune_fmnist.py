"""benchmarks/tune_fmnist.py: what an installed recipe's header says the tune changed."""

from __future__ import annotations

from conftest import load_benchmark


def test_changed_values_compare_the_best_trial_with_trial_0(tmp_path):
    (tmp_path / "best.yaml").write_text(
        "method: dfad\nsearch:\n  generator.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  g_steps: {low: 1, high: 3, int: true}\n")
    (tmp_path / "trials.csv").write_text(
        "number,state,val_acc1,generator.lr,g_steps\n"
        "0,COMPLETE,30.0,0.001,1\n"
        "1,COMPLETE,40.0,0.00074,1\n"   # the best: only the learning rate moved
        "2,PRUNED,45.0,0.005,3\n"      # pruned trials are never the best
        "3,FAIL,,0.002,2\n")
    changed = load_benchmark("tune_fmnist").changed_values
    assert changed(tmp_path) == "generator.lr 0.001 -> 0.00074"
    (tmp_path / "trials.csv").write_text(
        "number,state,val_acc1,generator.lr,g_steps\n0,COMPLETE,50.0,0.001,1\n"
        "1,COMPLETE,40.0,0.00074,2\n")
    assert changed(tmp_path) == "none (the recipe's own values were best)"


def test_trial_0_is_its_finished_retry(tmp_path):
    # trial 0 was killed twice; its values finished as trial 2 (retry_of 0)
    (tmp_path / "trials.csv").write_text(
        "number,state,val_acc1,retry_of,g_steps\n0,FAIL,,,1\n1,FAIL,,0,1\n"
        "2,COMPLETE,32.5,0,1\n3,COMPLETE,42.5,,2\n")
    _, first, best = load_benchmark("tune_fmnist").read_trials(tmp_path)
    assert (first["number"], first["val_acc1"]) == ("2", "32.5")
    assert best["number"] == "3"
