"""The generation engine behind `chat`, `serve` and the web UI: one inference thread that decodes every
running request together (continuous batching), fed by a bounded queue.

- `load_served_model(model, ModelSourceOptions(adapter, template, rope_scaling))` loads what `chat`
  and `serve` serve: the model (alias, HF dir, `.gguf`, hub id; RoPE scaling through the transformers
  config), an adapter merged in memory (`train.adapter.merge_adapter`), its tokenizer (the adapter's
  own when it has one) and the chat template `sft` trained with.
- `Engine.submit(prompt_ids, sampling, stop_ids, sink)` queues a generation and returns its `Job`;
  a full queue raises `EngineBusy` (with a retry-after estimate). Before every step the inference
  thread moves queued jobs into the batch (up to `max_batch`), then runs one step of
  `langadapt.model.batch.BatchDecoder` (UTF-8 mask, per-character text, stop strings and its own
  sampling settings and seed per request): a prefill of the jobs that joined, or one token for
  every job. It hands each job's `sink` each piece of text (str), then the `Generation`, or the
  exception that ended it. `Job.cancel()` takes the job out of the batch at the next step (the
  others go on), or drops it before it starts if it is still queued.
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
from langadapt.model.batch import BatchDecoder, Sequence
from langadapt.model.generate import Generation, Sampling, Utf8Table
from langadapt.model.load import ROPE_SCALING_HELP, check_rope_scaling, load_model, model_context
from langadapt.options import Options, option
from langadapt.sources import hub_error, resolve_model_source
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
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype: auto keeps the checkpoint's (float32 with an adapter). bfloat16 halves "
                             "the memory each decoding step reads; it is faster only on CPUs with bf16 arithmetic "
                             "(AVX-512 BF16, AMX) and on GPUs (docs/benchmarks.md)")

    def __post_init__(self):
        super().__post_init__()
        check_rope_scaling(self.rope_scaling)


def check_served_model(model: str | None, source: ModelSourceOptions) -> None:
    """Fail before a server starts, with a one-line LangadaptError, when the model (or its adapter) is not
    there: a path that does not exist, a directory without config.json, a hub id whose config cannot be read."""
    if source.adapter:
        model = model or read_adapter(source.adapter).get("base_source")
    if not model:
        raise LangadaptError(f"{source.adapter}: its adaptation.json names no base model; give the model")
    resolved = resolve_model_source(model)
    if isinstance(resolved, str):  # a hub id: read its config (a small file) now
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(resolved)
        except Exception as e:  # noqa: BLE001 - offline, unknown, gated: one line
            raise hub_error(resolved, e) from e


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
    dtype = None if source.dtype == "auto" else source.dtype
    loaded = load_model(model, dtype="float32" if source.adapter else dtype, rope_scaling=source.rope_scaling)
    if source.adapter:
        loaded = merge_adapter(loaded, source.adapter)
        if dtype:
            loaded = loaded.to(getattr(torch, dtype))
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

    def __init__(self, model, tokenizer, template: str, max_queue: int = 32, max_batch: int = 32, name: str = "model"):
        self.model, self.tokenizer, self.template, self.name = model, tokenizer, template, name
        self.table = Utf8Table(tokenizer, width=model.get_output_embeddings().weight.shape[0])
        self.context = model_context(model) or 2048
        self.chat_stop_ids = stop_token_ids(tokenizer, template)
        self.text_stop_ids = stop_token_ids(tokenizer, "")
        self.max_batch = max_batch
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.running: list[Job] = []  # in the batch (the inference thread's; read-only elsewhere)
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
        return bool(self.running) or not self.queue.empty()

    def close(self) -> None:
        """Cancel what is running, drop what waits and stop the inference thread."""
        for job in list(self.running):
            job.cancel()
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

    def _admit(self, decoder: BatchDecoder, started: dict) -> bool:
        """Move queued jobs into the batch (waiting for one when nothing runs); False once `close` was called."""
        block = not self.running
        while len(self.running) < self.max_batch:
            try:
                job = self.queue.get(block=block)
            except queue.Empty:
                return True
            block = False
            if job is None:
                for running in self.running:
                    running.cancel()
                return False
            if job.cancelled.is_set():
                job.done.set()
                continue
            seq = Sequence(job.prompt_ids, job.sampling, job.stop_ids, self._handed_to(job), job.cancelled.is_set)
            decoder.add(seq)
            started[seq] = (job, time.perf_counter())
            self.running.append(job)
        return True

    @staticmethod
    def _handed_to(job: Job) -> Sink:
        """`job.sink`, cancelling the job when it fails (its client has gone) instead of failing the batch."""
        def sink(event) -> None:
            try:
                job.sink(event)
            except Exception:  # noqa: BLE001
                job.cancel()
        return sink

    def _end(self, job: Job, started_at: float, event) -> None:
        if isinstance(event, Generation):
            job.result = event
        try:
            self._handed_to(job)(event)
        finally:
            self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - started_at)
            self.running.remove(job)
            job.done.set()

    def _work(self) -> None:
        decoder = BatchDecoder(self.model, self.tokenizer, self.table)
        started: dict[Sequence, tuple[Job, float]] = {}
        while True:
            open_ = self._admit(decoder, started)
            try:
                ended = [(seq, seq.result) for seq in decoder.step()]
            except Exception as e:  # noqa: BLE001 - handed to every job of the batch
                ended = [(seq, e) for seq in decoder.fail_all()]
            for seq, event in ended:
                self._end(*started.pop(seq), event)
            if not open_ and not len(decoder):
                return
