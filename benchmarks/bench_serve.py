"""Serving throughput, side by side in one run: `langadapt serve` (continuous batching), `transformers serve`
(its default and its --continuous-batching) and llama.cpp's server (llama-cpp-python, f16 and q8_0 GGUF),
on SmolLM2-135M-Instruct with 2 threads, the same Korean chat prompts, greedy, at 1, 8 and 32 concurrent
streams; and, in-process, the three ways to batch that were weighed (a static batch of `generate`,
transformers' `generate_batch`, langadapt's `BatchDecoder`).

    pip install 'langadapt[bench]'
    PYTHONPATH=src python benchmarks/bench_serve.py --json benchmarks/bench_serve.json

Each server is its own process on 127.0.0.1, started and stopped in turn, so they never share the cores.
At concurrency c, c clients (the `openai` client, streaming) each send one request at once (at 1: --single
requests one after another); each request is a different prompt of PROMPTS, greedy, --max-tokens tokens at
most. Figures per server and concurrency: total tokens/s (completion tokens counted by SmolLM2's tokenizer on
the text, the same rule for every server), Korean (Hangul) characters/s, and time to first token p50/p95.
The machine's load average is recorded: other work on the cores slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import torch

PROMPTS = [
    "한국의 수도는 어디입니까?", "김치를 만드는 방법을 알려 주세요.", "봄에 관한 짧은 시를 써 주세요.",
    "대한민국 헌법 제1조는 무엇입니까?", "고양이와 개의 차이점은 무엇인가요?", "건강하게 사는 방법을 알려 주세요.",
    "한글은 누가 만들었나요?", "서울에서 부산까지 어떻게 가나요?", "좋은 친구란 어떤 사람인가요?",
    "비가 오는 날에 할 수 있는 일은?", "컴퓨터는 어떻게 작동하나요?", "한국의 전통 음식을 소개해 주세요.",
    "공부를 잘하는 방법은 무엇인가요?", "바다에 관한 이야기를 들려 주세요.", "민주주의란 무엇입니까?",
    "가을 날씨는 어떤가요?", "책을 읽으면 좋은 점은?", "커피와 차 중에서 무엇이 더 좋나요?",
    "태양계에는 행성이 몇 개 있나요?", "운동을 매일 해야 하는 이유는?", "한국어를 배우는 좋은 방법은?",
    "겨울에 감기를 예방하는 방법은?", "인공지능이란 무엇인가요?", "제주도는 어떤 곳인가요?",
    "아침 식사로 무엇을 먹으면 좋을까요?", "물을 많이 마시면 좋은 점은?", "환경을 보호하는 방법은?",
    "세종대왕은 누구입니까?", "여름 방학 계획을 세워 주세요.", "음악이 사람에게 주는 영향은?",
    "산에 오를 때 필요한 준비물은?", "행복이란 무엇이라고 생각하나요?",
]


def hangul(text: str) -> int:
    return sum("\uac00" <= ch <= "\ud7a3" for ch in text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_once(client, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy chat request: seconds to the first content, total seconds, the text."""
    start = time.perf_counter()
    first, pieces = None, []
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - start
            pieces.append(chunk.choices[0].delta.content)
    return {"ttft": first if first is not None else time.perf_counter() - start,
            "seconds": time.perf_counter() - start, "text": "".join(pieces)}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def measure(url: str, model: str, tokenizer, concurrency: int, max_tokens: int, single: int) -> dict:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=1800)
    stream_once(client, model, "안녕하세요", 4)  # warm-up
    start = time.perf_counter()
    if concurrency == 1:
        runs = [stream_once(client, model, PROMPTS[i], max_tokens) for i in range(single)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            runs = list(pool.map(lambda i: stream_once(client, model, PROMPTS[i % len(PROMPTS)], max_tokens),
                                 range(concurrency)))
    wall = time.perf_counter() - start
    tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in runs)
    ttfts = [r["ttft"] for r in runs]
    return {"streams": concurrency, "requests": len(runs), "wall_seconds": round(wall, 2),
            "tokens_per_second": round(tokens / wall, 2),
            "korean_chars_per_second": round(sum(hangul(r["text"]) for r in runs) / wall, 2),
            "ttft_p50": round(percentile(ttfts, 0.5), 3), "ttft_p95": round(percentile(ttfts, 0.95), 3),
            "texts": [r["text"] for r in runs]}


class Server:
    """A server process on 127.0.0.1 that is healthy once `health` answers 200."""

    def __init__(self, argv: list[str], port: int, health: str, log: Path):
        self.url, self.health = f"http://127.0.0.1:{port}", health
        self.log = log.open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> str:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: see {self.log.name}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def in_process(model_dir: str, tokenizer, n: int, max_new_tokens: int) -> dict:
    """Tokens/s in one process, greedy, `n` prompts of `max_new_tokens` (EOS ignored where the API allows):
    `generate` one at a time, a static batch of 8, transformers' `generate_batch`, langadapt's BatchDecoder."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from langadapt.model.batch import BatchDecoder, Sequence, generate_all
    from langadapt.model.generate import Sampling, Utf8Table

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in PROMPTS[:n]]
    out = {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def timed(label, tokens, fn):
        start = time.perf_counter()
        fn()
        out[label] = round(tokens / (time.perf_counter() - start), 2)
        print(label, out[label], flush=True)

    def generate(batch):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=0)

    timed("generate_one_at_a_time", 4 * max_new_tokens, lambda: [generate([p]) for p in prompts[:4]])
    timed("generate_static_batch_8", n * max_new_tokens,
          lambda: [generate(prompts[i:i + 8]) for i in range(0, n, 8)])
    table = Utf8Table(tokenizer, width=model.config.vocab_size)
    timed(f"batch_decoder_{n}", n * max_new_tokens, lambda: generate_all(
        BatchDecoder(model, tokenizer, table), [Sequence(p, Sampling(max_new_tokens=max_new_tokens), [])
                                                 for p in prompts], max_batch=n))
    paged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="paged|sdpa").eval()
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    holder = {}
    timed(f"transformers_generate_batch_{n}", n * max_new_tokens,
          lambda: holder.update(r=paged.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)))
    out[f"transformers_generate_batch_{n}_tokens"] = sum(len(r.generated_tokens) for r in holder["r"].values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--single", type=int, default=4, help="requests, one after another, at concurrency 1")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--servers", nargs="+", default=["langadapt", "langadapt-bf16", "transformers",
                                                     "transformers-cb", "llama.cpp-f16", "llama.cpp-q8_0"])
    ap.add_argument("--json", default="benchmarks/bench_serve.json")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench-serve"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from langadapt.sources import resolve_model_source

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = str(resolve_model_source("smollm2-135m"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cli = [sys.executable, "-m", "langadapt.cli"]
    result = {"model": "SmolLM2-135M-Instruct", "model_dir": model_dir, "threads": 2, "max_tokens": args.max_tokens,
              "load_average_before": os.getloadavg(), "servers": {}}

    for name in args.servers:
        port = free_port()
        if name.startswith("llama.cpp"):
            kind = name.split("-")[1]
            gguf = work / f"smollm2-{kind}.gguf"
            if not gguf.exists():
                subprocess.run(cli + ["export", "gguf", model_dir, "--out", str(gguf), "--type", kind], check=True)
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
                    "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "4096", "--port", str(port),
                    "--interrupt_requests", "False",  # by default a new request interrupts the running one
                    "--host", "127.0.0.1"]
            health, model = "/v1/models", "smollm2"
        elif name.startswith("transformers"):
            argv = [str(Path(sys.executable).with_name("transformers")), "serve", model_dir, "--port", str(port),
                    "--host", "127.0.0.1", "--device", "cpu", "--dtype", "float32"]
            argv += ["--continuous-batching"] if name.endswith("-cb") else []
            health, model = "/health", model_dir
        else:
            argv = cli + ["serve", model_dir, "--port", str(port), "--served-model-name", "smollm2",
                          "--max-batch", "32", "--max-queue", "64"]
            argv += ["--dtype", "bfloat16"] if name.endswith("bf16") else []
            health, model = "/health", "smollm2"
        figures = {}
        try:
            with Server(argv, port, health, work / f"{name}.log") as url:
                for c in args.streams:
                    figures[str(c)] = measure(url, model, tokenizer, c, args.max_tokens, args.single)
                    print(name, json.dumps({k: v for k, v in figures[str(c)].items() if k != "texts"}), flush=True)
        except Exception as e:  # noqa: BLE001 - reported with the figures
            figures["error"] = f"{type(e).__name__}: {e}"
            print(name, "failed:", figures["error"], flush=True)
        result["servers"][name] = figures

    la = result["servers"].get("langadapt", {})
    if "1" in la and "32" in la:
        result["langadapt_32_over_1"] = round(la["32"]["tokens_per_second"] / la["1"]["tokens_per_second"], 2)
    result["greedy_answers_equal_to_langadapt_float32"] = {  # share of the same prompts answered identically
        name: {c: round(sum(a == b for a, b in zip(f[c]["texts"], la[c]["texts"])) / len(f[c]["texts"]), 2)
               for c in f if c in la and "texts" in f[c]}
        for name, f in result["servers"].items() if name != "langadapt"}
    result["in_process"] = in_process(model_dir, tokenizer, 16, args.max_tokens)
    result["load_average_after"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "servers"}, indent=2))


if __name__ == "__main__":
    main()
