"""tunelab serve --executor ray: the same app as Ray Serve replicas on a local Ray
instance; answers equal predict's, both replicas answer, SIGTERM shuts it all down."""

import httpx
import numpy as np
import pytest

import tunelab
from tests.conftest import Server, rows_of, write_topic_splits
from tunelab.cli import main

pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_two_ray_serve_replicas_answer_like_predict(tiny_bert_dir, tmp_path):
    data = write_topic_splits(tmp_path / "topics", 20, 6, 6)
    run = tmp_path / "probe"
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(data), "--out", str(run),
                 "--precision", "fp32"]) == 0
    server = Server(tmp_path, run, "--executor", "ray", "--replicas", "2", ready_within=240)
    try:
        texts = [r["text"] for r in rows_of(run / "predictions" / "test.csv")]
        answer = httpx.post(f"{server.url}/v1/predict", json={"inputs": texts}, timeout=60)
        assert answer.status_code == 200, answer.text
        expected = tunelab.predict(run, texts)
        assert [p["label"] for p in answer.json()["predictions"]] == [e.label for e in expected]
        np.testing.assert_allclose([p["score"] for p in answer.json()["predictions"]], [e.score for e in expected],
                                   atol=1e-5)
        bad = httpx.post(f"{server.url}/v1/predict", json={"inputs": [""]}, timeout=60)
        assert bad.status_code == 422 and bad.json() == {"error": "input 1 is empty"}
        processes = {httpx.get(f"{server.url}/health", timeout=30).json()["process"] for _ in range(40)}
        assert len(processes) == 2
    finally:
        assert server.stop(timeout=120) == 0, server.output()[-3000:]
