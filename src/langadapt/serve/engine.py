"""The generation engine behind `chat`, `serve` and the web UI: one inference thread fed by a bounded queue.

- `load_served_model(model, ModelSourceOptions(adapter, template, rope_scaling))` loads what `chat`
  and `serve` serve: the model (alias, HF dir, `.gguf`, hub id; RoPE scaling through the transformers
  config), an adapter merged in memory (`train.adapter.merge_adapter`), its tokenizer (the adapter's
  own when it has one) and the chat template `sft` trained with.
- `Engine.submit(prompt_ids, sampling, stop_ids, sink)` queues a generation and returns its `Job`;
  a full queue raises `EngineBusy` (with a retry-after estimate). The inference thread runs one
  job at a time with `langadapt.model.generate.generate_text` (UTF-8 mask, per-character text,
  stop strings, per-request seed) and hands the job's `sink` each piece of text (str), then the
  `Generation`, or the exception that ended it. `Job.cancel()` stops the job at the next step,
  or before it starts if it is still queued.
- `Engine.run(...)` is the blocking form for terminal use: it returns the `Generation` and cancels
  the job if Ctrl-C interrupts the wait.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from langadapt.errors import LangadaptError
from langadapt.model.generate import Generation, Sampling, Utf8Table, generate_text
from langadapt.model.load import ROPE_SCALING_HELP, check_rope_scaling, load_model, model_context
from langadapt.options import Options, option
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.tokenizer.templates import render, resolve_template, stop_token_ids
from langadapt.train.adapter import merge_adapter, read_adapter

Sink = Callable[[object], None]  # receives str pieces, then a Generation or an Exception


@dataclass
class ModelSourceOptions(Options):
    """How the served model is made (shared by `chat` and `serve`)."""

    adapter: str | None = option(None, metavar="DIR", help="an adapter dir from `pretrain` or `sft`, merged into the "
                                                           "model in memory")
    template: str = option("auto", help="chat template: auto (the model's own, which `sft` sets to the one it "
                                        "trained with), alpaca, llama2-chat, firefly, chatml or a .jinja file")
    rope_scaling: str | None = option(None, metavar="linear:F|dynamic:F|yarn:F|auto", help=ROPE_SCALING_HELP)

    def __post_init__(self):
        super().__post_init__()
        check_rope_scaling(self.rope_scaling)


def load_served_model(model: str | None, source: ModelSourceOptions) -> tuple:
    """(model, tokenizer, template) for `chat` and `serve`: the model plus its adapter, tokenizer and template.

    `model` may be None with an adapter: the base the adapter names is used."""
    if source.adapter:
        model = model or read_adapter(source.adapter).get("base_source")
    if not model:
        raise LangadaptError(f"{source.adapter}: its adaptation.json names no base model; give the model")
    adapter_has_tokenizer = source.adapter and any(
        (Path(source.adapter) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    tokenizer = load_tokenizer(source.adapter if adapter_has_tokenizer else resolve_model_source(model))
    template = resolve_template(tokenizer, source.template)
    loaded = load_model(model, dtype="float32" if source.adapter else None, rope_scaling=source.rope_scaling)
    if source.adapter:
        loaded = merge_adapter(loaded, source.adapter)
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    return loaded.eval(), tokenizer, template


class EngineBusy(LangadaptError):
    """The queue is full; `retry_after` is a guess of the seconds until there is room."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"the server is busy: {queued} requests are waiting; retry in about {retry_after} s")
        self.retry_after = retry_after


class ContextTooLong(LangadaptError):
    """A prompt that leaves no room for an answer in the model's context."""


class Job:
    """One generation in the engine. `cancel()` stops it; `done` is set when it has ended."""

    def __init__(self, prompt_ids: list[int], sampling: Sampling, stop_ids: list[int], sink: Sink):
        self.prompt_ids, self.sampling, self.stop_ids, self.sink = prompt_ids, sampling, stop_ids, sink
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.result: Generation | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """A loaded model behind one inference thread. See the module docstring."""

    def __init__(self, model, tokenizer, template: str, max_queue: int = 32, name: str = "model"):
        self.model, self.tokenizer, self.template, self.name = model, tokenizer, template, name
        self.table = Utf8Table(tokenizer, width=model.get_output_embeddings().weight.shape[0])
        self.context = model_context(model) or 2048
        self.chat_stop_ids = stop_token_ids(tokenizer, template)
        self.text_stop_ids = stop_token_ids(tokenizer, "")
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.running: Job | None = None
        self.seconds_per_job = 5.0  # a running mean, for Retry-After
        self.thread = threading.Thread(target=self._work, name="langadapt-inference", daemon=True)
        self.thread.start()

    # -- prompts

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The token ids of a conversation rendered with the chat template, ready for the answer."""
        text = render(self.tokenizer, self.template, messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt(self, text: str) -> list[int]:
        """The token ids of a raw completion prompt (with BOS when the tokenizer adds one)."""
        return self.tokenizer(text)["input_ids"]

    def fit(self, prompt_ids: list[int], sampling: Sampling) -> Sampling:
        """`sampling` with max_new_tokens cut to what the context leaves after the prompt."""
        room = self.context - len(prompt_ids)
        if room < 1:
            raise ContextTooLong(f"the prompt is {len(prompt_ids)} tokens; the model's context is {self.context} "
                                 "tokens, so no room is left for an answer")
        if sampling.max_new_tokens <= room:
            return sampling
        return Sampling(**{**sampling.__dict__, "max_new_tokens": room})

    # -- jobs

    def submit(self, prompt_ids: list[int], sampling: Sampling, stop_ids: list[int], sink: Sink) -> Job:
        """Queue a generation; raises EngineBusy when the queue is full, ContextTooLong for a prompt too long."""
        job = Job(prompt_ids, self.fit(prompt_ids, sampling), stop_ids, sink)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            waiting = self.queue.qsize()
            raise EngineBusy(waiting, max(1, math.ceil(self.seconds_per_job))) from None
        return job

    def run(self, prompt_ids: list[int], sampling: Sampling, stop_ids: list[int],
            on_text: Callable[[str], None] | None = None) -> Generation:
        """Generate and wait (text streamed through `on_text` in the calling thread); Ctrl-C cancels the job."""
        events: queue.Queue = queue.Queue()
        job = self.submit(prompt_ids, sampling, stop_ids, events.put)
        try:
            while True:
                event = events.get()
                if isinstance(event, str):
                    if on_text:
                        on_text(event)
                elif isinstance(event, BaseException):
                    raise LangadaptError(f"generation failed: {type(event).__name__}: {event}") from event
                else:
                    return event
        except KeyboardInterrupt:
            job.cancel()
            job.done.wait()
            raise

    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        return self.running is not None or not self.queue.empty()

    def close(self) -> None:
        """Cancel what is running, drop what waits and stop the inference thread."""
        if self.running:
            self.running.cancel()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job:
                job.cancel()
                job.done.set()
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            if job.cancelled.is_set():
                job.done.set()
                continue
            self.running = job
            start = time.perf_counter()
            try:
                job.result = generate_text(self.model, self.tokenizer, self.table, job.prompt_ids, job.sampling,
                                           job.stop_ids, on_text=job.sink, cancelled=job.cancelled.is_set)
                job.sink(job.result)
            except Exception as e:  # noqa: BLE001 - handed to whoever waits for the job
                job.sink(e)
            finally:
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - start)
                self.running = None
                job.done.set()
