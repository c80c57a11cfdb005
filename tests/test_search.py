"""Hyperparameter search: a step's search block (and tunelab search) runs trials as run
directories scored on validation only, prunes on the validation curve, continues a
killed search, runs the best configuration once on every split, and reports it; bad
blocks stop in one line before any trial runs."""

import json

import pytest
import yaml

from tests.conftest import metrics_of, write_topic_splits
from tunelab.cli import main


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("search-topics"), 16, 8, 8)


def study_file(path, model, data, search, command="finetune", **settings):
    step = {"name": "ft", "command": command, "model": str(model), "data": {"dataset": str(data)},
            "search": search, **settings}
    if command == "finetune":
        step.setdefault("train", {"max_steps": 8, "eval_every": 2, "batch_size": 8})
    path.write_text(yaml.safe_dump({"name": "s", "steps": [step]}))
    return path


def test_search_trials_prune_and_only_the_best_scores_test(tmp_path, tiny_bert_dir, topics):
    search = {"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}, "train.warmup": {"uniform": [0.0, 0.2]}},
              "trials": 6, "metric": "validation.accuracy", "sampler": "tpe", "pruner": "median", "seed": 0}
    path = study_file(tmp_path / "s.yaml", tiny_bert_dir, topics, search)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    record = json.loads((out / "ft.search.json").read_text())
    assert len(record["trials"]) == 6 and sum(record["counts"][k] for k in ("complete", "pruned", "fail")) == 6
    for trial in record["trials"]:
        metrics = metrics_of(out / trial["run"])
        assert set(metrics["splits"]) == {"validation"}, trial  # trials never see test
        assert trial["curve"], trial  # validation reported at every evaluation
        if trial["state"] == "pruned":
            assert trial["note"].startswith("pruned at evaluation")
            assert metrics["task"]["training"]["steps"] < 8  # stopped where it was pruned, kept its run
    complete = [t for t in record["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert record["best"]["trial"] == best["number"] and record["best"]["params"] == best["params"]
    best_metrics = metrics_of(out / "ft-best")
    assert {"validation", "test"} <= set(best_metrics["splits"])
    assert best_metrics["splits"]["validation"]["accuracy"] == pytest.approx(best["value"])
    config = yaml.safe_load((out / "ft-best" / "config.yaml").read_text())
    assert config["train"]["lr"] == pytest.approx(best["params"]["train.lr"])
    report = (out / "report.md").read_text()
    assert "## Search: ft" in report and "ft-best" in report and "search-ft.png" in report
    assert "lr:" in report  # the best configuration as YAML
    assert "ft-trial0 |" not in report.split("## Search: ft")[0].split("## Steps")[0]  # at a glance: best only


def test_a_killed_search_continues_to_the_same_number_of_trials(tmp_path, tiny_bert_dir, topics):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    search = {"space": {"classifier.c": {"loguniform": [0.01, 100.0]}}, "trials": 2, "sampler": "random"}
    path = study_file(tmp_path / "s.yaml", tiny_bert_dir, topics, search, command="probe")
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    storage = JournalStorage(JournalFileBackend(str(out / "ft.search.journal")))
    killed = optuna.load_study(study_name="ft", storage=storage)
    left = killed.ask()  # a trial left running, as by a killed search (its settings drawn, its run unfinished)
    left.suggest_float("classifier.c", 0.01, 100.0, log=True)
    search["trials"] = 3
    path = study_file(tmp_path / "s.yaml", tiny_bert_dir, topics, search, command="probe")
    assert main(["run", str(path), "--out", str(out)]) == 0
    record = json.loads((out / "ft.search.json").read_text())
    states = [t["state"] for t in record["trials"]]
    assert states.count("complete") == 3 and record["counts"]["interrupted"] == 1
    interrupted = next(t for t in record["trials"] if "interrupted" in t["note"])
    rerun = [t for t in record["trials"] if t["state"] == "complete" and t["params"] == interrupted["params"]]
    assert rerun  # the interrupted trial's settings ran again


def test_tunelab_search_command(tmp_path, tiny_bert_dir, topics):
    out = tmp_path / "cmd"
    assert main(["search", "probe", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--space",
                 "classifier.c=0.1,1.0,10.0", "--sampler", "grid", "--trials", "3", "--pruner", "none",
                 "--set", "classifier.kind=logreg", "--out", str(out)]) == 0
    record = json.loads((out / "probe.search.json").read_text())
    assert sorted(t["params"]["classifier.c"] for t in record["trials"]) == [0.1, 1.0, 10.0]
    assert (out / "probe-best" / "metrics.json").is_file()


@pytest.mark.parametrize("search, message", [
    ({"space": {"train.lrr": [1e-3]}, "trials": 2}, "search.space key 'train.lrr' is not a setting"),
    ({"space": {"train.lr": {"uniform": [0.1, 0.1]}}}, "is empty (low must be below high)"),
    ({"space": {"train.lr": {"loguniform": [0.0, 0.1]}}}, "loguniform needs bounds above 0"),
    ({"space": {"train.lr": [1e-3]}, "metric": "validation.acuracy"}, "no split has the metric 'acuracy'"),
    ({"space": {"train.lr": [1e-3]}, "metric": "test.accuracy"}, "chosen on validation only"),
    ({"space": {"train.lr": [1e-3]}, "trials": 0}, "search.trials must be a whole number of at least 1"),
    ({"space": {"train.lr": []}}, "is an empty list of values"),
    ({"space": {"train.lr": {"loguniform": [1e-5, 1e-2]}}, "sampler": "grid"}, "grid needs a list of values"),
])
def test_a_bad_search_block_stops_in_one_line_before_any_trial(tmp_path, tiny_bert_dir, topics, capsys, search,
                                                               message):
    path = study_file(tmp_path / "s.yaml", tiny_bert_dir, topics, search)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_same_seed_and_budget_give_the_same_best_trial(tmp_path, tiny_bert_dir, topics):
    search = {"space": {"classifier.c": {"loguniform": [0.001, 100.0]}}, "trials": 3, "sampler": "tpe",
              "pruner": "none", "seed": 7}
    bests = []
    for name in ("a", "b"):
        path = study_file(tmp_path / f"{name}.yaml", tiny_bert_dir, topics, search, command="probe")
        assert main(["run", str(path), "--out", str(tmp_path / name)]) == 0
        record = json.loads((tmp_path / name / "ft.search.json").read_text())
        bests.append((record["best"]["trial"], record["best"]["params"], [t["params"] for t in record["trials"]]))
    assert bests[0] == bests[1]


@pytest.mark.parametrize("flags", [["--jobs", "2"], ["--executor", "ray"]], ids=["jobs", "ray"])
def test_trials_run_in_other_processes_and_still_report_to_the_pruner(tmp_path, tiny_bert_dir, topics, flags):
    search = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "trials": 4, "sampler": "random",
              "pruner": "median", "seed": 3}
    path = study_file(tmp_path / "s.yaml", tiny_bert_dir, topics, search)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), *flags]) == 0
    record = json.loads((out / "ft.search.json").read_text())
    assert len(record["trials"]) == 4 and record["best"] is not None
    assert all(t["curve"] for t in record["trials"])  # validation reached the journal from each process
    assert (out / "ft-best" / "metrics.json").is_file()


def test_a_run_that_cannot_stop_is_never_called_pruned():
    import optuna

    from tunelab.core.trial import PRUNED_AT, make_pruner, report, reporting_to, trial_reporter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(optuna, "median"))
    for value in (0.9, 0.9, 0.9):  # three finished trials set the median
        trial = study.ask()
        for step in (1, 2, 3):
            trial.report(value, step)
        study.tell(trial, value)
    trial = study.ask()
    with reporting_to(trial_reporter(optuna, study, trial, "accuracy")):
        assert report(1, {"accuracy": 0.1}) is False  # the first evaluation is never compared
        assert report(2, {"accuracy": 0.1}, can_stop=False) is False  # a probe's grid, a last evaluation
        assert PRUNED_AT not in study.trials[-1].user_attrs
        assert report(3, {"accuracy": 0.1}) is True
    assert study.trials[-1].user_attrs[PRUNED_AT] == {"step": 3, "value": 0.1}
    assert report(4, {"accuracy": 0.1}) is False  # no search: reporting never stops a run
