"""benchmarks/tune_fmnist.py: what an installed recipe's header says the tune changed."""

from __future__ import annotations

import tune_fmnist as tune


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
    changed = tune.changed_values
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
    _, first, best = tune.read_trials(tmp_path)
    assert (first["number"], first["val_acc1"]) == ("2", "32.5")
    assert best["number"] == "3"


def _study(folder, states: list[str]) -> None:
    folder.mkdir(parents=True)
    (folder / "best.yaml").write_text(
        "method: dfq\ng_steps: 2\nsearch:\n  g_steps: {low: 1, high: 3, int: true}\n")
    (folder / "trials.csv").write_text("number,state,val_acc1,retry_of,g_steps\n" + "".join(
        f"{i},{state},{50 + i if state == 'COMPLETE' else ''},,{1 + (i == 1)}\n"
        for i, state in enumerate(states)))


def test_install_writes_the_best_trial_under_the_recipe_comment(tmp_path, monkeypatch):
    recipe = tmp_path / "dfq_lenet5.yaml"
    recipe.write_text("# DFQ on Fashion-MNIST.\n# Usage: dfkd distill ...\nmethod: dfq\n"
                      "g_steps: 1\n")
    monkeypatch.setitem(tune.RECIPES, "dfq", recipe)
    monkeypatch.setitem(tune.INSTALL, "dfq", recipe)
    _study(tmp_path / "out" / "dfq", ["COMPLETE", "COMPLETE", "FAIL"])
    # 2 of 3 finished (a failed trial does not count): the recipe is left as it is
    assert "2 of 3 trials finished, not installed" in tune.install("dfq", tmp_path / "out", 3,
                                                                   "CMD")
    assert recipe.read_text().endswith("g_steps: 1\n")
    for _ in range(2):   # a re-install keeps one header
        tune.install("dfq", tmp_path / "out", 2, "CMD")
        text = recipe.read_text()
        assert text.startswith("# DFQ on Fashion-MNIST.\n# Usage: dfkd distill ...\n")
        assert text.count(tune.INSTALLED) == 1 and text.count("# Tuned on the val split") == 1
        assert "# Changed by the tune: g_steps 1 -> 2." in text
        assert text.endswith("g_steps: 2\nsearch:\n  g_steps: {low: 1, high: 3, int: true}\n")


def test_a_finished_study_is_not_run_again(tmp_path, monkeypatch):
    _study(tmp_path / "dfq", ["COMPLETE", "PRUNED"])
    ran = []
    monkeypatch.setattr(tune.subprocess, "run", lambda *a, **k: ran.append(a))
    args = tune.argparse.Namespace(out=str(tmp_path), trials=2, set=[], teacher="T.pt")
    tune.tune_one("dfq", args, 1)   # 2 finished of 2: an installed recipe is not re-asked
    assert ran == []
    tune.tune_one("dfq", tune.argparse.Namespace(**{**vars(args), "trials": 3}), 1)
    assert len(ran) == 1
    assert tune.row("cmi", tmp_path) == "| cmi | 0 + 0 | - | - | - |"  # not started yet
