"""Inference sharded across two processes (torchrun, gloo on CPU) equals one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")


def torchrun(args, port, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNELAB_CACHE_DIR=str(tmp_path / "cache-ddp"))
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port), "-m", "tunelab", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def metrics_of(run):
    return json.loads((run / "metrics.json").read_text())


def test_probe_features_sharded_over_two_processes(tiny_bert_dir, topic_folder, tmp_path):
    args = ["probe", "--model", tiny_bert_dir, "--dataset", topic_folder, "--classifier", "logreg"]
    torchrun([*args, "--out", tmp_path / "two"], 29541, tmp_path)
    assert main([*map(str, args), "--out", str(tmp_path / "one"), "--no-cache"]) == 0
    two, one = metrics_of(tmp_path / "two"), metrics_of(tmp_path / "one")
    assert two["environment"]["processes"] == 2
    assert two["splits"] == one["splits"]
    assert (tmp_path / "two" / "predictions" / "test.csv").read_text().splitlines()[1:] == \
        (tmp_path / "one" / "predictions" / "test.csv").read_text().splitlines()[1:]


def test_zeroshot_sharded_over_two_processes(tiny_clip_dir, colour_folder, tmp_path):
    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    (data / "test" / "red" / "broken.png").write_bytes(b"not an image")
    args = ["zeroshot", "--model", tiny_clip_dir, "--dataset", data]
    torchrun([*args, "--out", tmp_path / "two"], 29542, tmp_path)
    assert main([*map(str, args), "--out", str(tmp_path / "one"), "--num-workers", "0"]) == 0
    two, one = metrics_of(tmp_path / "two"), metrics_of(tmp_path / "one")
    assert two["splits"] == one["splits"] and two["splits"]["test"]["n"] == 24
    assert two["skipped"] == one["skipped"] == {"count": 1, "files": ["test/red/broken.png"]}
