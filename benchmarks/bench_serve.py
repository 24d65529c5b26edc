"""`langadapt serve` speed through the real HTTP server on 127.0.0.1: time to first token, tokens/s for one
stream and for 32 concurrent streams, how fast a disconnect frees the inference thread, and, for the
decision on batching, `model.generate` alone at batch 1 and batch 8 (the same prompt, no server).

    PYTHONPATH=src python benchmarks/bench_serve.py --json benchmarks/bench_serve.json

Every request goes to 127.0.0.1 only; the request loops are bounded (--ttft-runs, --streams). Streams use
temperature 0.7 with a seed per request and stop at --max-tokens or EOS; tokens are the server's own usage
counts. The machine's load average is recorded with the figures: other work on the cores slows them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import torch

from langadapt.model.generate import Utf8Mask
from langadapt.serve.engine import Engine, ModelSourceOptions, load_served_model
from langadapt.serve.server import BackgroundServer, build_app

PROMPT = "Write a short story about a cat who learns to read."


def stream_once(client, max_tokens: int, seed: int) -> dict:
    """One streamed chat request: seconds to the first content, total seconds, completion tokens."""
    start = time.perf_counter()
    first = None
    tokens = 0
    for chunk in client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=max_tokens, temperature=0.7, seed=seed, stream=True,
                                                stream_options={"include_usage": True}):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first, "seconds": time.perf_counter() - start, "tokens": tokens}


def disconnect_free_seconds(url: str, engine: Engine) -> float:
    """Seconds from hanging up on a long stream until the inference thread is free."""
    body = {"model": "smollm2-135m", "max_tokens": 1000, "stream": True, "temperature": 0.8,
            "messages": [{"role": "user", "content": PROMPT}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if '"content":' in line and '"content":""' not in line:
                break
    hung_up = time.perf_counter()
    while engine.busy() and time.perf_counter() - hung_up < 60:
        time.sleep(0.005)
    return time.perf_counter() - hung_up


def generate_alone(engine: Engine, batch: int, max_new_tokens: int) -> float:
    """Tokens/s of `model.generate` alone (greedy, no EOS stop, UTF-8 mask) on `batch` copies of the prompt."""
    ids = torch.tensor([engine.chat_prompt([{"role": "user", "content": PROMPT}])] * batch)
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    min_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=engine.tokenizer.pad_token_id,
                                    logits_processor=[Utf8Mask(engine.table)])
    return (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ttft-runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--stream-tokens", type=int, default=32, help="max_tokens of each concurrent stream")
    ap.add_argument("--json", default="benchmarks/bench_serve.json")
    args = ap.parse_args()

    model, tok, template = load_served_model("smollm2-135m", ModelSourceOptions())
    engine = Engine(model, tok, template, max_queue=args.streams, name="smollm2-135m")
    result = {"model": "smollm2-135m", "threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}
    with BackgroundServer(build_app(lambda: engine)) as url:
        while httpx.get(url + "/health").status_code != 200:
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)
        stream_once(client, 4, 0)  # warm-up
        singles = [stream_once(client, args.max_tokens, seed) for seed in range(args.ttft_runs)]
        result["one_stream"] = {
            "runs": args.ttft_runs, "max_tokens": args.max_tokens,
            "ttft_seconds_median": round(statistics.median(s["ttft"] for s in singles), 3),
            "tokens_per_second": round(sum(s["tokens"] for s in singles) / sum(s["seconds"] for s in singles), 2)}
        print(json.dumps(result["one_stream"]), flush=True)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.streams) as pool:
            many = list(pool.map(lambda i: stream_once(client, args.stream_tokens, i), range(args.streams)))
        wall = time.perf_counter() - start
        ttfts = sorted(s["ttft"] for s in many)
        result["concurrent_streams"] = {
            "streams": args.streams, "max_tokens": args.stream_tokens, "wall_seconds": round(wall, 1),
            "tokens_per_second_total": round(sum(s["tokens"] for s in many) / wall, 2),
            "ttft_seconds_median": round(statistics.median(ttfts), 2), "ttft_seconds_max": round(ttfts[-1], 2)}
        print(json.dumps(result["concurrent_streams"]), flush=True)

        result["disconnect_to_free_seconds"] = round(disconnect_free_seconds(url, engine), 3)
        print(json.dumps({"disconnect_to_free_seconds": result["disconnect_to_free_seconds"]}), flush=True)
    result["generate_alone_tokens_per_second"] = {
        f"batch_{b}": round(generate_alone(engine, b, args.stream_tokens), 2) for b in (1, 8)}
    print(json.dumps(result["generate_alone_tokens_per_second"]), flush=True)
    result["load_average_after"] = os.getloadavg()
    engine.close()
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
