"""Studies and reports: a tiny study end to end, reruns, a broken step, parsed numbers,
and the HTML page in a real headless browser."""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import topic_rows, write_csv
from tunelab.cli import main
from tunelab.report.document import find_runs, write_report


@pytest.fixture
def study_file(tmp_path, tiny_bert_dir, tiny_clip_dir, colour_folder):
    topics = tmp_path / "topics"
    write_csv(topics / "train.csv", topic_rows(30, seed=1))
    write_csv(topics / "validation.csv", topic_rows(8, seed=2))
    write_csv(topics / "test.csv", topic_rows(8, seed=3))
    study = {
        "name": "tiny",
        "baseline": "probe",
        "variables": {"clip_model": None},
        "settings": {"seed": 3, "data": {"max_eval_samples": 24}, "images": {"num_workers": 0}},
        "steps": [
            {"name": "probe", "command": "probe", "model": str(tiny_bert_dir), "data": {"dataset": str(topics)},
             "classifier": {"kind": "logreg"}},
            {"name": "finetune", "command": "finetune", "model": str(tiny_bert_dir), "data": {"dataset": str(topics)},
             "train": {"max_steps": 20, "eval_every": 10, "lr": 1.0e-3, "batch_size": 8}},
            {"name": "broken", "command": "probe", "model": str(tiny_bert_dir),
             "data": {"dataset": str(tmp_path / "missing")}},
            {"name": "zeroshot", "command": "zeroshot", "requires": ["clip_model"], "model": "${clip_model}",
             "data": {"dataset": str(colour_folder)}},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def steps_of(root):
    return {s["name"]: s for s in json.loads((root / "study.json").read_text())["steps"]}


def test_study_runs_reports_and_reruns(study_file, tmp_path, tiny_clip_dir, capsys):
    root = tmp_path / "study"
    assert main(["run", str(study_file), "--out", str(root)]) == 1  # the broken step fails the study
    steps = steps_of(root)
    assert [steps[n]["status"] for n in ("probe", "finetune", "broken", "zeroshot")] == \
        ["completed", "completed", "failed", "skipped"]
    assert "not found" in steps["broken"]["detail"] and "clip_model" in steps["zeroshot"]["detail"]
    for name in ("probe", "finetune"):
        assert (root / name / "metrics.json").is_file()
    assert (root / "report.md").is_file() and (root / "report.html").is_file()
    first_probe = (root / "probe" / "metrics.json").read_bytes()

    # Rerun: completed steps are kept, the skipped one runs once its variable is set.
    assert main(["run", str(study_file), "--out", str(root), "--set", f"clip_model={tiny_clip_dir}"]) == 1
    steps = steps_of(root)
    assert steps["probe"]["status"] == "reused" and steps["finetune"]["status"] == "reused"
    assert steps["zeroshot"]["status"] == "completed"
    assert (root / "probe" / "metrics.json").read_bytes() == first_probe

    # A changed setting redoes exactly the steps it reaches.
    assert main(["run", str(study_file), "--out", str(root), "--set", f"clip_model={tiny_clip_dir}",
                 "--set", "finetune.train.max_steps=10"]) == 1
    steps = steps_of(root)
    assert steps["finetune"]["status"] == "completed" and steps["probe"]["status"] == "reused"
    assert json.loads((root / "finetune" / "metrics.json").read_text())["task"]["training"]["steps"] == 10


def test_all_steps_fine_exits_zero(study_file, tmp_path):
    study = yaml.safe_load(study_file.read_text())
    study["steps"] = [s for s in study["steps"] if s["name"] != "broken"]
    study_file.write_text(yaml.safe_dump(study))
    assert main(["run", str(study_file), "--out", str(tmp_path / "ok")]) == 0  # skipped steps are fine


def test_bad_study_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nsteps:\n  - command: train\n")
    assert main(["run", str(path)]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def make_run(root, name, command, dataset, splits, seed=0, model="m"):
    """A finished run directory with fixed numbers."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"command": command, "model": model, "seed": seed,
                                                     "data": {"dataset": dataset}}))
    (run / "command.txt").write_text(f"tunelab {command} --seed {seed}\n")
    metrics = {"command": command, "model": model, "dataset": dataset,
               "splits": {s: {"accuracy": a, "f1": a, "f1_macro": a, "n": n} for s, (a, n) in splits.items()},
               "params": {"total": 1000, "trainable": 10}, "timing": {"seconds": {"train": 2.0}, "throughput": {}},
               "environment": {"device": "cpu"}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if command == "finetune":
        (run / "history.json").write_text(json.dumps([{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.5},
                                                      {"step": 20, "eval_accuracy": 0.8}]))
    return run


@pytest.fixture
def fixed_runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a-probe", "probe", "rt", {"validation": (0.80, 1000), "test": (0.75, 1000)})
    make_run(root, "b-finetune-s1", "finetune", "rt", {"test": (0.85, 1000)}, seed=1)
    make_run(root, "c-finetune-s2", "finetune", "rt", {"test": (0.87, 1000)}, seed=2)
    make_run(root, "d-other-data", "probe", "other", {"test": (0.5, 10)})
    return root


def test_report_numbers_and_deltas(fixed_runs, tmp_path, capsys):
    out = tmp_path / "cmp.md"
    assert main(["report", str(fixed_runs), "--out", str(out), "--baseline", "a-probe"]) == 0
    text = out.read_text()
    rows = {(cells[0], cells[4]): cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| "))
            if len(cells) > 7}
    # The Wilson 95% interval of 850 of 1000: centre (0.85 + 1.96^2/2000) / (1 + 1.96^2/1000)
    assert rows[("b-finetune-s1", "test")][6] == "accuracy"
    assert rows[("b-finetune-s1", "test")][7] == "0.8500 [0.8265, 0.8708]"
    assert rows[("d-other-data", "test")][7] == "0.5000 [0.2366, 0.7634]"
    assert rows[("b-finetune-s1", "test")][8] == "+0.1000"
    assert rows[("c-finetune-s2", "test")][8] == "+0.1200"
    assert rows[("a-probe", "validation")][8] == "+0.0000"
    assert rows[("d-other-data", "test")][8] == "—"  # another dataset: no delta
    # The two fine-tuning runs differ only in seed: mean and spread
    seed_row = next(line for line in text.splitlines() if line.startswith("| b-finetune-s1 | test | accuracy | 2 |"))
    assert "| 0.8600 | 0.0141 |" in seed_row
    assert re.search(r"!\[training loss and validation metric.*\]\(cmp_files/training-curves.png\)", text)
    assert (tmp_path / "cmp_files" / "training-curves.png").is_file()
    assert "tunelab finetune --seed 1" in text
    assert len(find_runs([fixed_runs])) == 4


def test_report_refuses_empty(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_html_report_loads_every_image_in_a_browser(fixed_runs, tmp_path):
    _, html = write_report([fixed_runs], tmp_path / "r.md", baseline="a-probe")
    page = html.read_text()
    assert page.count("data:image/png;base64,") == page.count("<img")  # self-contained
    # Let the page report, in its title, how many images decoded to a real size.
    probe = html.with_name("probe.html")
    probe.write_text(page.replace("</body>", "<script>window.onload=()=>{const i=[...document.images];"
                                  "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+"
                                  "' of '+i.length;}</script></body>"))
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", done.stdout)
    assert title, done.stderr[-2000:]
    loaded, total = map(int, re.match(r"loaded (\d+) of (\d+)", title.group(1)).groups())
    assert total == page.count("<img") >= 2 and loaded == total
