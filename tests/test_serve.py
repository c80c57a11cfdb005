"""tunelab serve: real servers in their own processes on 127.0.0.1, real HTTP requests.
Answers equal `predict`'s, concurrent requests share batches, and bad clients, limits,
a full queue and SIGTERM get the documented answers while the server keeps serving."""

import asyncio
import base64
import json
import shutil
import signal
import socket

import httpx
import numpy as np
import pytest

import tunelab
from tests.conftest import Server, rows_of, write_csv, write_topic_splits
from tunelab.cli import main
from tunelab.serve.batching import Batcher, QueueFull


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tiny_clip_dir, colour_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    topics = write_topic_splits(root / "topics", 40, 8, 8)
    assert main(["finetune", "--model", str(tiny_bert_dir), "--dataset", str(topics), "--out", str(root / "text"),
                 "--max-steps", "20", "--batch-size", "8", "--lr", "2e-3", "--precision", "fp32"]) == 0
    pairs = root / "pair-data"
    pairs.mkdir()
    for split, n in (("train", 40), ("validation", 10), ("test", 10)):
        write_csv(pairs / f"{split}.csv", [(f"sport game {i % 5}", f"music song {i % 3}", i % 2) for i in range(n)],
                  header=("sentence1", "sentence2", "label"))
    assert main(["probe", "--model", str(tiny_bert_dir), "--dataset", str(pairs), "--out", str(root / "pairs"),
                 "--precision", "fp32"]) == 0
    assert main(["zeroshot", "--model", str(tiny_clip_dir), "--dataset", str(colour_folder), "--out",
                 str(root / "images"), "--precision", "fp32", "--set", "images.num_workers=0"]) == 0
    shutil.copytree(root / "text", root / "exported")
    assert main(["export", str(root / "exported")]) == 0
    return {name: root / name for name in ("text", "pairs", "images", "exported")}


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("logs"), runs["text"], f"duo={runs['pairs']}", runs["images"],
                    runs["exported"], "--max-wait-ms", "20")
    yield server
    assert server.stop() == 0, server.output()


def post(server, body, **kwargs):
    return httpx.post(f"{server.url}/v1/predict", json=body, timeout=60, **kwargs)


def test_answers_equal_predict_for_texts_pairs_and_images(server, runs, colour_folder):
    texts = [r["text"] for r in rows_of(runs["text"] / "predictions" / "test.csv")]
    answer = post(server, {"model": "text", "inputs": texts})
    assert answer.status_code == 200, answer.text
    expected = tunelab.predict(runs["text"], texts)
    served = answer.json()["predictions"]
    assert [p["label"] for p in served] == [e.label for e in expected]
    np.testing.assert_allclose([p["score"] for p in served], [e.score for e in expected], atol=1e-5)

    pair_rows = rows_of(runs["pairs"] / "predictions" / "test.csv")
    pairs = [[r["text"], r["text_pair"]] for r in pair_rows]
    served = post(server, {"model": "duo", "inputs": pairs}).json()["predictions"]
    expected = tunelab.predict(runs["pairs"], [tuple(p) for p in pairs])
    assert [p["label"] for p in served] == [e.label for e in expected] == [r["prediction"] for r in pair_rows]
    np.testing.assert_allclose([p["score"] for p in served], [e.score for e in expected], atol=1e-5)

    files = sorted((colour_folder / "test").rglob("*.png"))[::4]
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    served = post(server, {"model": "images", "inputs": images}).json()["predictions"]
    expected = tunelab.predict(runs["images"], [str(f) for f in files])
    assert [p["label"] for p in served] == [e.label for e in expected]
    np.testing.assert_allclose([p["score"] for p in served], [e.score for e in expected], atol=1e-5)
    raw = httpx.post(f"{server.url}/v1/models/images/image", content=files[0].read_bytes(), timeout=60)
    assert raw.status_code == 200 and raw.json()["predictions"] == served[:1]


def test_a_run_with_an_onnx_export_is_served_through_it(server, runs):
    texts = [r["text"] for r in rows_of(runs["text"] / "predictions" / "test.csv")]
    served = post(server, {"model": "exported", "inputs": texts}).json()["predictions"]
    through_onnx = tunelab.predict(runs["exported"], texts, backend="onnx")
    assert [p["label"] for p in served] == [e.label for e in through_onnx]
    np.testing.assert_allclose([p["score"] for p in served], [e.score for e in through_onnx], atol=1e-6)
    record = json.loads((runs["exported"] / "onnx" / "export.json").read_text())
    torch_scores = [e.score for e in tunelab.predict(runs["exported"], texts)]
    np.testing.assert_allclose([p["score"] for p in served], torch_scores, atol=max(1e-4, 10 * record["tolerance"]))


def test_models_health_ready_metrics_and_docs(server, runs):
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert set(models) == {"text", "duo", "images", "exported"}
    assert models["exported"]["backend"] == "onnx" and models["text"]["backend"] == "torch"
    assert models["duo"]["inputs"] == "pairs" and models["images"]["inputs"] == "images"
    metrics = json.loads((runs["text"] / "metrics.json").read_text())
    assert models["text"]["task"] == "finetune" and models["text"]["labels"] == metrics["data"]["class_names"]
    assert models["text"]["value"] == metrics["splits"]["test"][models["text"]["metric"]]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "process": server.process.pid}
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert "/v1/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    post(server, {"model": "text", "inputs": ["sport"]})
    exposition = httpx.get(f"{server.url}/metrics").text
    for name in ("tunelab_requests_total", "tunelab_request_seconds_bucket", "tunelab_batch_size_bucket",
                 "tunelab_queue_depth", "tunelab_request_errors_total"):
        assert name in exposition
    assert 'tunelab_requests_total{path="/v1/predict",status="200"}' in exposition


BAD_BODIES = [
    ({"model": "text", "inputs": ["ok"], "extra": 1}, 422, "unknown field 'extra'"),
    ({"model": "text", "texts": ["ok"]}, 422, "unknown field 'texts'"),
    ({"model": "text", "inputs": "sport"}, 422, "'inputs' must be a list"),
    ({"model": "text", "inputs": []}, 422, "'inputs' is empty"),
    ({"model": "text", "inputs": ["fine", "  "]}, 422, "input 2 is empty"),
    ({"model": "text", "inputs": [3]}, 422, "input 1 is a int, not text"),
    ({"model": "text", "inputs": [["a", "b"]]}, 422, "takes single texts, not pairs"),
    ({"model": "duo", "inputs": ["just one"]}, 422, "takes sentence pairs"),
    ({"model": "images", "inputs": ["not base64!"]}, 422, "not base64-encoded"),
    ({"model": "images", "inputs": [base64.b64encode(b"GIF89a broken").decode()]}, 422, "cannot be read"),
    ({"inputs": ["sport"]}, 422, "several runs are served"),
    ({"model": "nope", "inputs": ["sport"]}, 404, "no served model 'nope'"),
    ([1, 2], 422, "must be a JSON object"),
]


@pytest.mark.parametrize("body, status, message", BAD_BODIES)
def test_bad_requests_get_one_message_and_the_server_keeps_serving(server, body, status, message):
    answer = post(server, body)
    assert answer.status_code == status and set(answer.json()) == {"error"}, answer.text
    assert message in answer.json()["error"]
    assert post(server, {"model": "text", "inputs": ["sport"]}).status_code == 200


def test_broken_bytes_huge_bodies_and_disconnects(server, colour_folder):
    headers = {"content-type": "application/json"}
    for body, message in ((b'{"model": "text", "inputs": ["\xff\xfe"]}', "not UTF-8"),
                          (b'{"model": "text", "inputs": [', "not JSON")):
        answer = httpx.post(f"{server.url}/v1/predict", content=body, headers=headers)
        assert answer.status_code == 422 and message in answer.json()["error"]
    truncated = next((colour_folder / "test").rglob("*.png")).read_bytes()[:60]
    answer = httpx.post(f"{server.url}/v1/models/images/image", content=truncated)
    assert answer.status_code == 422 and "image 1 cannot be read" in answer.json()["error"]
    answer = post(server, {"model": "text", "inputs": ["sport"] * 10_000})
    assert answer.status_code == 413 and "at most 256" in answer.json()["error"]
    try:
        answer = httpx.post(f"{server.url}/v1/predict", content=b"x" * (50 * 2**20), headers=headers, timeout=60)
        assert answer.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection as soon as it has answered 413
    with socket.create_connection(("127.0.0.1", server.port)) as raw:  # a client that leaves mid-request
        raw.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 500\r\n\r\n{\"model\": \"text\", \"inputs\": [\"spo")
    assert post(server, {"model": "text", "inputs": ["sport"]}).status_code == 200


def test_concurrent_requests_share_batches_and_get_their_own_answers(server, runs):
    texts = [r["text"] for r in rows_of(runs["text"] / "predictions" / "test.csv")] * 4

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"model": "text", "inputs": [t]})
                                          for t in texts))

    before = batch_counts(server)
    answers = asyncio.run(burst())
    after = batch_counts(server)
    assert all(a.status_code == 200 for a in answers)
    expected = tunelab.predict(runs["text"], texts)
    assert [a.json()["predictions"][0]["label"] for a in answers] == [e.label for e in expected]
    np.testing.assert_allclose([a.json()["predictions"][0]["score"] for a in answers], [e.score for e in expected],
                               atol=1e-5)
    calls, inputs = after[0] - before[0], after[1] - before[1]
    assert inputs == len(texts) and calls < len(texts) / 2  # batched, not one call per request


def batch_counts(server) -> tuple[float, float]:
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    value = {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith("tunelab_batch_size")}
    return value.get('tunelab_batch_size_count{model="text"}', 0.0), value.get('tunelab_batch_size_sum{model="text"}',
                                                                                 0.0)


def test_a_full_queue_answers_503_a_key_guards_and_sigterm_drains(runs, tmp_path):
    server = Server(tmp_path, runs["text"], "--max-queue", "4", "--max-wait-ms", "300", "--max-batch", "64",
                    "--api-key", "s3cret")
    try:
        assert httpx.post(f"{server.url}/v1/predict", json={"inputs": ["sport"]}).status_code == 401
        assert httpx.get(f"{server.url}/health").status_code == 200
        key = {"Authorization": "Bearer s3cret"}

        async def flood():
            async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=key) as client:
                return await asyncio.gather(*(client.post("/v1/predict", json={"inputs": ["sport music"]})
                                              for _ in range(40)))

        answers = asyncio.run(flood())
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1
        assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)

        async def in_flight_then_sigterm():
            async with httpx.AsyncClient(base_url=server.url, timeout=60, headers={"X-API-Key": "s3cret"}) as client:
                pending = [asyncio.create_task(client.post("/v1/predict", json={"inputs": ["sport"]}))
                           for _ in range(3)]
                await asyncio.sleep(0.1)  # queued, waiting out --max-wait-ms
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*pending)

        drained = asyncio.run(in_flight_then_sigterm())
        assert [a.status_code for a in drained] == [200, 200, 200]
        assert server.process.wait(60) == 0
    finally:
        server.stop()


def test_other_hosts_need_a_key(runs, capsys, monkeypatch):
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
    assert main(["serve", str(runs["text"]), "--host", "0.0.0.0"]) == 2
    assert "give --api-key" in capsys.readouterr().err
    assert main(["serve", str(runs["text"]), "--max-batch", "0"]) == 2
    assert main(["serve", "bad name=" + str(runs["text"])]) == 2


def test_the_batcher_isolates_a_failing_request():
    def predict(items):
        if "boom" in items:
            raise ValueError("boom")
        return [item.upper() for item in items]

    async def scenario():
        batcher = Batcher(predict, max_batch=8, max_wait_ms=50, max_queue=6)
        batcher.start()
        results = await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["boom"]), batcher.submit(["c"]),
                                       return_exceptions=True)
        flood = await asyncio.gather(*(batcher.submit(["x", "y"]) for _ in range(5)), return_exceptions=True)
        await batcher.close()
        return results, flood

    results, flood = asyncio.run(scenario())
    assert results[0] == ["A", "B"] and results[2] == ["C"] and isinstance(results[1], ValueError)
    assert sum(isinstance(r, QueueFull) for r in flood) == 2 and flood[0] == ["X", "Y"]
