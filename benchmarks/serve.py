"""Serving under load: ``tunelab serve`` against a plain FastAPI app that calls
transformers' ``pipeline()`` once per request, each its own process on 127.0.0.1, driven
by an asyncio client (aiohttp) at 1, 8, 32 and 128 concurrent clients, each sending
single Rotten Tomatoes test sentences back to back, on the same machine.

    python benchmarks/serve.py [--model minilm] [--run RUN] [--seconds 10] [--quick]

Without ``--run`` it first fine-tunes a short MiniLM run (speed does not depend on how
well it learned). infinity-emb is measured too when it is installed. Prints requests/s,
p50 and p99 latency and failures per server and concurrency, then one JSON line with
the ratios of tunelab serve's requests/s to the pipeline server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PIPELINE_APP = textwrap.dedent('''
    import sys
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    classify = pipeline("text-classification", model=sys.argv[1], device="cpu")
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: dict):  # FastAPI runs a plain def in its thread pool
        out = classify(body["inputs"])
        return {"predictions": [{"label": o["label"], "score": o["score"]} for o in out]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    import urllib.request

    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[:4]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"{command[:4]} did not start: {log.read_text()[-2000:]}")


async def drive(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    """``clients`` loops sending one text per request for ``seconds``; latencies of
    answered requests and the status of every one."""
    import aiohttp

    latencies, statuses, failures = [], {}, 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)

    async def client(offset: int, session) -> None:
        nonlocal failures
        i = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                async with session.post(url, json={"inputs": [texts[i % len(texts)]]}) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status == 200:
                        latencies.append(time.perf_counter() - started)
            except aiohttp.ClientError:
                failures += 1
            i += clients

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, session) for k in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"clients": clients, "requests_per_s": len(latencies) / elapsed, "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "connection_failures": failures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="hub id, local directory or alias (default minilm)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--run", help="an existing fine-tuning run directory to serve")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per concurrency level")
    parser.add_argument("--clients", default="1,8,32,128", help="concurrency levels, comma-separated")
    parser.add_argument("--serve-args", default="", help="more flags for tunelab serve, e.g. '--backend onnx'")
    parser.add_argument("--quick", action="store_true", help="a 10-step run and 2 s per level: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    seconds = 2.0 if args.quick else args.seconds
    levels = [int(c) for c in args.clients.split(",")]

    import tunelab
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset

    texts = load_text_dataset(DataConfig(dataset="rotten_tomatoes")).splits["test"].texts
    workdir = Path(tempfile.mkdtemp(prefix="tunelab-serve-bench-"))
    run = Path(args.run) if args.run else workdir / "run"
    if not args.run:
        config = tunelab.FinetuneConfig(
            model=args.model, data=DataConfig(dataset="rotten_tomatoes", max_train_samples=320,
                                              max_eval_samples=128),
            train=tunelab.TrainConfig(max_steps=10, eval_every=10, batch_size=32, lr=5e-5))
        tunelab.finetune(config, out=run)
    (workdir / "pipeline_app.py").write_text(PIPELINE_APP)

    servers = {
        "tunelab_serve": lambda port: [sys.executable, "-m", "tunelab", "serve", str(run), "--port", str(port),
                                       "--max-queue", "4096", "-q", *args.serve_args.split()],
        "fastapi_pipeline": lambda port: [sys.executable, str(workdir / "pipeline_app.py"), str(run / "model"),
                                          str(port)],
    }
    try:
        import infinity_emb  # noqa: F401
    except ImportError:
        print("infinity-emb is not installed here: not measured")
    results = {}
    for name, command in servers.items():
        port = free_port()
        process = start(command(port), port, workdir / f"{name}.log")
        try:
            url = f"http://127.0.0.1:{port}/v1/predict"
            asyncio.run(drive(url, texts, 4, 1.0))  # warm up
            results[name] = [asyncio.run(drive(url, texts, c, seconds)) for c in levels]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    print(f"single-text requests, {seconds:g} s per level, {os.cpu_count()} CPUs")
    print("| server | clients | requests/s | p50 ms | p99 ms | statuses | connection failures |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            print(f"| {name} | {r['clients']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['statuses']} | {r['connection_failures']} |")
    summary = {"benchmark": "serve", "model": args.model, "seconds": seconds}
    for i, clients in enumerate(levels):
        ours, plain = results["tunelab_serve"][i], results["fastapi_pipeline"][i]
        summary[f"ratio_rps_{clients}"] = round(ours["requests_per_s"] / max(plain["requests_per_s"], 1e-9), 2)
        summary[f"tunelab_p99_ms_{clients}"] = round(ours["p99_ms"], 1)
        summary[f"tunelab_failed_{clients}"] = ours["connection_failures"] + sum(
            v for k, v in ours["statuses"].items() if k not in ("200", "503"))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
