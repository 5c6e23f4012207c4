"""The study plots a study logs to MLflow (drawn by integrations/optuna.py)."""

from __future__ import annotations

import optuna

from msdn_tune.integrations.optuna import study_plots


def test_study_plots(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    single = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    single.optimize(lambda t: t.suggest_float("a", 0, 1) - t.suggest_int("b", 0, 3) / 10, 8)
    paths = study_plots(single, tmp_path / "single", objective_names=["val/H"])
    names = {p.name for p in paths}
    assert {"history.png", "parallel_coordinate.png", "param_importances.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)

    multi = optuna.create_study(directions=["maximize", "minimize"])
    multi.optimize(lambda t: (t.suggest_float("a", 0, 1), t.suggest_float("b", 0, 1)), 6)
    names = {p.name for p in study_plots(multi, tmp_path / "multi", objective_names=["H", "t"])}
    assert {"pareto_front.png", "history_H.png", "history_t.png"} <= names

    one_param = optuna.create_study()
    one_param.optimize(lambda t: t.suggest_float("a", 0, 1), 3)
    names = {p.name for p in study_plots(one_param, tmp_path / "one", objective_names=["x"])}
    assert "history.png" in names and not any("importances" in n for n in names)
    assert study_plots(optuna.create_study(), tmp_path / "empty", objective_names=["x"]) == []
