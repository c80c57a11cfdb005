"""Studies that answer the question: sweeps, seeds, floors, paired tests, learning
curves, cost and calibration, run serially, in parallel jobs, and on Ray; every number
in the report recomputed from the runs' prediction files."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import metrics_of, write_topic_splits
from tunelab.cli import main


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    return write_topic_splits(tmp_path_factory.mktemp("topics"), 40, 10, 20)


def curve_study(path: Path, model, data) -> Path:
    study = {
        "name": "curve",
        "baseline": "majority",
        "matrix": {"seed": [0, 1, 2]},
        "steps": [
            {"name": "majority", "command": "baseline", "kind": "majority", "data": {"dataset": str(data)},
             "matrix": {"seed": [0]}},
            {"name": "tfidf", "command": "baseline", "kind": "tfidf", "data": {"dataset": str(data)},
             "matrix": {"data.shots": [2, 8, 30]}},
            {"name": "probe", "command": "probe", "model": str(model), "data": {"dataset": str(data)},
             "classifier": {"kind": "logreg", "c": 10.0}, "features": {"pooling": "mean"},
             "matrix": {"data.shots": [2, 8, 30]}},
        ],
    }
    path.write_text(yaml.safe_dump(study))
    return path


def test_dry_run_lists_the_expanded_runs(tmp_path, topics, tiny_bert_dir, capsys):
    path = curve_study(tmp_path / "s.yaml", tiny_bert_dir, topics)
    assert main(["run", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "19 runs in 3 steps"
    names = [line.split()[0] for line in lines[:-1]]
    assert names[0] == "majority-seed0" and "probe-shots8-seed1" in names and "tfidf-shotsall-seed2" not in names
    assert main(["run", str(path), "--dry-run", "--set", "probe.matrix.data.shots=[2]", "--set",
                 "matrix.seed=[5]"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "5 runs in 3 steps"


def test_a_bad_matrix_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "steps": [{"name": "p", "command": "probe", "matrix":
                                                            {"data.shotz": [1]}}]}))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "matrix key 'data.shotz' is neither a study variable nor a setting" in capsys.readouterr().err


@pytest.fixture(scope="module")
def curve(tmp_path_factory, topics, tiny_bert_dir):
    root = tmp_path_factory.mktemp("curve")
    path = curve_study(root / "s.yaml", tiny_bert_dir, topics)
    assert main(["run", str(path), "--out", str(root / "out")]) == 0
    return root / "out"


def test_the_report_answers_the_question(curve):
    text = (curve / "report.md").read_text()
    for heading in ("## At a glance", "## Seeds", "## Paired comparisons", "## Learning curves", "## Cost",
                    "## Calibration"):
        assert heading in text, heading
    assert re.search(r"Chosen on validation: (probe|tfidf)-shots\d+ \(highest validation accuracy, \d\.\d{4}\); "
                     r"on test it scores \d\.\d{4}", text)
    assert "Against the floor majority (the declared baseline majority)" in text
    share = re.search(r"It is highest in (\d+)% of 1,000 resamples of the validation examples", text)
    analysis = json.loads((curve / "analysis.json").read_text())
    assert share and analysis["families"][0]["chosen_wins_share"] == pytest.approx(int(share.group(1)) / 100, abs=0.006)
    assert "reference recipe" not in text
    for picture in ("at-a-glance.png", "learning-curves.png", "cost.png", "reliability.png"):
        assert (curve / "report_files" / picture).is_file(), picture
    assert "p (adjusted)" in text and "corrected over pre-ordered chains at 0.05" in text and "In plain words:" in text
    html = (curve / "report.html").read_text()
    assert html.count("data:image/png;base64,") == html.count("<img") >= 4


def _predictions(run, split="test"):
    import csv

    with open(Path(run) / "predictions" / f"{split}.csv", newline="") as handle:
        return {r["id"]: (r["label"], r["prediction"]) for r in csv.DictReader(handle)}


def plain(markdown: str) -> str:
    """report.md as a reader sees it: Markdown's backslash escapes removed."""
    return re.sub(r"\\([\\`*_\[\]~+\-#>=])", r"\1", markdown)


def test_report_numbers_equal_those_recomputed_from_predictions(curve):
    from scipy.stats import binomtest, t

    runs = [curve / f"probe-shots30-seed{s}" for s in range(3)]
    accuracies = [metrics_of(r)["splits"]["test"]["accuracy"] for r in runs]
    for run, accuracy in zip(runs, accuracies):  # metrics.json agrees with the prediction file
        rows = _predictions(run).values()
        assert accuracy == pytest.approx(np.mean([a == b for a, b in rows]))
    text = plain((curve / "report.md").read_text())
    mean, sd = np.mean(accuracies), np.std(accuracies, ddof=1)
    half = t.ppf(0.975, 2) * sd / np.sqrt(3)
    row = next(line for line in text.splitlines() if line.startswith("| probe-shots30 | test | accuracy |"))
    assert f"| {mean:.4f} | {sd:.4f} |" in row and f"[{mean - half:.4f}, {mean + half:.4f}]" in row
    # The paired test against the majority floor, from the prediction files: every seed's
    # own McNemar test, and a verdict no stronger than a paired t-test over the seeds allows.
    from scipy.stats import ttest_1samp

    floor = _predictions(curve / "majority-seed0")
    deltas, per_seed = [], []
    for run in runs:
        probe = _predictions(run)
        right_probe = np.array([probe[i][0] == probe[i][1] for i in sorted(floor)])
        right_floor = np.array([floor[i][0] == floor[i][1] for i in sorted(floor)])
        only_probe, only_floor = int((right_probe & ~right_floor).sum()), int((~right_probe & right_floor).sum())
        per_seed.append(binomtest(only_probe, only_probe + only_floor, 0.5).pvalue)
        deltas.append(right_probe.mean() - right_floor.mean())
    line = next(line for line in text.splitlines() if line.startswith("| probe-shots30 | majority | "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # Seeds that gave exactly the same predictions (every training row drawn whatever the seed)
    # are one run, tested once by McNemar; seeds that differ are replicates of a paired t-test.
    one_run = all(_predictions(r) == _predictions(runs[0]) for r in runs[1:])
    assert cells[2] == f"{np.mean(deltas):+.4f}" and cells[6] == str(len(floor))
    assert cells[7] == ("1" if one_run else "3")
    for delta, p in zip(deltas[:1] if one_run else deltas, per_seed):
        assert f"{delta:+.4f} (p {p:.3g})" in cells[8]
    expected_p = per_seed[0] if one_run else ttest_1samp(deltas, 0.0).pvalue
    assert float(cells[4]) == pytest.approx(expected_p, rel=1e-2, abs=1e-12) and float(cells[5]) >= float(cells[4])
    assert (cells[9] == "significant") == (float(cells[5]) < 0.05)
    assert cells[10].startswith("detects ±")
    analysis = json.loads((curve / "analysis.json").read_text())
    entry = next(c for c in analysis["comparisons"] if c["a"] == "probe-shots30" and c["purpose"] == "floor")
    assert entry["delta"] == pytest.approx(np.mean(deltas)) and entry["seed_pairs"] == (1 if one_run else 3)
    assert (entry["low"] > 0 or entry["high"] < 0) == entry["significant"]
    assert entry["minimum_detectable"] > 0


def test_learning_curves_look_ahead_with_their_backtest(curve, tmp_path):
    from importlib import resources

    text = plain((curve / "report.md").read_text())
    assert "Looking ahead" in text and "| method | form (chosen by backtest) |" in text
    analysis = json.loads((curve / "analysis.json").read_text())
    by_method = {e["method"]: e for e in analysis["extrapolations"]}
    assert set(by_method) == {"probe", "tfidf"}
    probe = by_method["probe"]
    assert probe["sizes"] == [2, 8, 30]
    at_30 = np.mean([metrics_of(curve / f"probe-shots30-seed{s}")["splits"]["test"]["accuracy"] for s in range(3)])
    assert probe["means"][-1] == pytest.approx(at_30)
    refit = [b for b in probe["backtests"] if b["size"] == 30 and b["fitted_on"] == [2, 8]]
    assert refit and all(b["measured"] == pytest.approx(at_30) for b in refit)
    for forecast in probe["forecasts"]:
        assert forecast["size"] == 30 * forecast["factor"]
        assert "refused" in forecast or forecast["low"] <= forecast["value"] <= forecast["high"]
    assert analysis["targets"] == []
    # --target: labels per class to reach a score, per curve, in the report and analysis.json
    out = tmp_path / "report.md"
    assert main(["report", str(curve), "--out", str(out), "--target", "0.99"]) == 0
    targeted = json.loads((tmp_path / "analysis.json").read_text())
    assert {t["method"] for t in targeted["targets"]} == {"probe", "tfidf"}
    assert all(t["status"] in ("not within", "cannot extrapolate", "forecast", "measured") for t in targeted["targets"])
    assert plain(out.read_text()).count("Labels to reach the target: ") == 2
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(targeted, json.loads((resources.files("tunelab.schemas") / "analysis.schema.json").read_text()))


def test_declared_comparisons_are_tested_first_in_their_order(curve, tmp_path):
    from tunelab.report.document import write_report

    out = tmp_path / "declared.md"
    write_report([curve], out, baseline="majority",
                 compare=[["probe-shots30", "tfidf-shots30"], ["probe", "tfidf-shots2"], ["nope", "tfidf-shots8"]])
    text = plain(out.read_text())
    assert "Declared before the runs" in text and "probe-shots30 against tfidf-shots30: " in text
    assert "not tested (probe vs tfidf-shots2: step probe has 3 groups; name one" in text
    assert "not tested (nope vs tfidf-shots8: no group nope)" in text
    analysis = json.loads((tmp_path / "declared.analysis.json").read_text())
    [declared] = [c for c in analysis["comparisons"] if c["purpose"] == "declared"]
    assert (declared["a"], declared["b"]) == ("probe-shots30", "tfidf-shots30")
    # The same pair met again later (a crossover, say) shares this test: one hypothesis.
    again = [c for c in analysis["comparisons"] if {c["a"], c["b"]} == {"probe-shots30", "tfidf-shots30"}]
    assert all(c["p"] == declared["p"] and c["p_adjusted"] == declared["p_adjusted"] for c in again)


@pytest.mark.parametrize("compare, message", [
    ("lora vs full", "compare must be a list"),
    (["lora vs lora"], "is not two different names"),
    ([["lora"]], "is not two different names"),
])
def test_a_bad_compare_is_one_line(tmp_path, capsys, compare, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "compare": compare, "steps": [{"name": "p", "command": "probe"}]}))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_calibration_is_measured_where_there_are_probabilities(curve):
    probe = metrics_of(curve / "probe-shots30-seed0")["splits"]["test"]
    assert 0 <= probe["ece"] <= 1
    assert "ece" in metrics_of(curve / "tfidf-shots30-seed0")["splits"]["test"]


def test_rerun_keeps_finished_runs_and_jobs_match_serial(curve, tmp_path, topics, tiny_bert_dir):
    path = curve_study(tmp_path / "s.yaml", tiny_bert_dir, topics)
    assert main(["run", str(path), "--out", str(curve)]) == 0
    state = json.loads((curve / "study.json").read_text())
    assert {s["status"] for s in state["steps"]} == {"reused"}
    parallel = tmp_path / "parallel"
    assert main(["run", str(path), "--out", str(parallel), "--jobs", "2", "--set", "matrix.seed=[1]",
                 "--set", "tfidf.matrix.data.shots=[8]", "--set", "probe.matrix.data.shots=[8]"]) == 0
    for name in ("tfidf-shots8-seed1", "probe-shots8-seed1"):
        serial, jobs = metrics_of(curve / name)["splits"], metrics_of(parallel / name)["splits"]
        for split in serial:
            assert jobs[split]["accuracy"] == pytest.approx(serial[split]["accuracy"], abs=0.01)


def test_baselines_predict(curve, capsys):
    for run in (curve / "majority-seed0", curve / "tfidf-shots30-seed0"):
        capsys.readouterr()
        assert main(["predict", str(run), "sport red film"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split("\t")[0] in ("music", "science", "sport")
    assert metrics_of(curve / "majority-seed0")["task"] == {"kind": "majority"}


@pytest.mark.slow
def test_ray_executor_matches_serial(curve, tmp_path, topics, tiny_bert_dir):
    pytest.importorskip("ray")
    path = curve_study(tmp_path / "s.yaml", tiny_bert_dir, topics)
    out = tmp_path / "ray"
    assert main(["run", str(path), "--out", str(out), "--executor", "ray", "--set", "matrix.seed=[2]",
                 "--set", "tfidf.matrix.data.shots=[30]", "--set", "probe.matrix.data.shots=[30]"]) == 0
    for name in ("majority-seed2", "tfidf-shots30-seed2", "probe-shots30-seed2"):
        if (curve / name).is_dir():
            assert metrics_of(out / name)["splits"]["test"]["accuracy"] == pytest.approx(
                metrics_of(curve / name)["splits"]["test"]["accuracy"], abs=0.01)
    assert (out / "report.md").is_file()
