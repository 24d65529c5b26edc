"""`langadapt chat`: a terminal chat that streams tokens and keeps what history fits.

- The model (plus an adapter merged in memory) and its tokenizer are loaded once; the prompt is
  the conversation rendered with a chat template (`tokenizer.templates`), tokenised without
  adding special tokens (the template writes BOS itself).
- Generation stops on EOS and on the template's end-of-turn token when it is one token
  (`<|im_end|>` for ChatML).
- `fit_history` keeps the prompt plus `--max-new-tokens` within the context window: the oldest
  user/assistant pairs go first; the system message and the current message stay (the current
  one cut from the left if it alone is too long).
- Interactive on a terminal (`/reset`, `/system TEXT`, `/exit`); `--prompt` or piped stdin
  answers once, printing only the answer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.model.load import MODEL_HELP
from langadapt.options import Options, OptionError, option
from langadapt.tokenizer.templates import stop_token_ids

COMMANDS = "/reset (forget the history), /system TEXT (set the system prompt and reset), /exit or /quit"


def fit_history(messages: list[dict], count_tokens: Callable[[list[dict]], int], budget: int) -> list[dict]:
    """`messages` (an optional system message, earlier turns, the current user message last) cut to
    `count_tokens(result) <= budget`: drop the oldest user/assistant pairs first, then cut the
    current message from the left. Never drops the system or the current message."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns, current = list(messages[len(system):-1]), dict(messages[-1])
    while turns and count_tokens(system + turns + [current]) > budget:
        turns.pop(0)  # the oldest message, then the rest of its pair (answers up to the next question)
        while turns and turns[0]["role"] != "user":
            turns.pop(0)
    if count_tokens(system + turns + [current]) <= budget:
        return system + turns + [current]
    text = current["content"]
    if count_tokens(system + [{**current, "content": ""}]) > budget:
        raise LangadaptError(f"the template and system prompt alone do not leave room for a message within {budget} tokens; "
                             "shorten --system or lower --max-new-tokens")
    lo, hi = 0, len(text)  # the longest suffix of `text` that fits: binary search on its length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_tokens(system + [{**current, "content": text[-mid:]}]) <= budget else (lo, mid - 1)
    return system + [{**current, "content": text[len(text) - lo:]}]


def generation_kwargs(opts: "ChatOptions") -> dict:
    """The `model.generate` options of the chat options."""
    kwargs = {"max_new_tokens": opts.max_new_tokens}
    if opts.greedy:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": opts.temperature, "top_p": opts.top_p,
            "top_k": opts.top_k, "repetition_penalty": opts.repetition_penalty}


class ChatSession:
    """A conversation with one model: `messages` (system first, if any) and `reply(text)`."""

    def __init__(self, model, tokenizer, template: str, system: str | None = None, gen_kwargs: dict | None = None,
                 warn: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
        self.model, self.tokenizer, self.template, self.warn = model, tokenizer, template, warn
        self.gen_kwargs = gen_kwargs or {"max_new_tokens": 256, "do_sample": False}
        self.stop_ids = stop_token_ids(tokenizer, template)
        self.context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2048
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_system(self, text: str) -> None:
        self.system = text or None
        self.reset()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from langadapt.tokenizer.templates import render

        text = render(self.tokenizer, self.template, messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def reply(self, text: str, on_token: Callable[[str], None] | None = None) -> str:
        """Answer `text` (streamed through `on_token`); the turn joins the history. Ctrl-C stops the
        answer, keeps what was said, and raises KeyboardInterrupt."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if not text.strip():
            raise LangadaptError("empty message")
        budget = self.context - self.gen_kwargs["max_new_tokens"]
        if budget <= 0:
            raise LangadaptError(f"--max-new-tokens {self.gen_kwargs['max_new_tokens']} leaves no room for the "
                                 f"prompt in the model's context of {self.context} tokens")
        messages = fit_history(self.messages + [{"role": "user", "content": text}],
                               lambda m: len(self.prompt_ids(m)), budget)
        if messages[-1]["content"] != text:
            self.warn(f"langadapt: the message is too long for the context window; kept its last "
                      f"{len(messages[-1]['content'])} of {len(text)} characters")
        ids = torch.tensor([self.prompt_ids(messages)], device=self.model.device)
        stop = threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, pad_token_id=pad,
                      eos_token_id=self.stop_ids, stopping_criteria=StoppingCriteriaList([_Stop()]),
                      **self.gen_kwargs)
        errors: list[BaseException] = []

        def work():
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        chunks: list[str] = []
        try:
            for chunk in streamer:
                if not chunk:
                    continue
                chunks.append(chunk)
                if on_token:
                    on_token(chunk)
        except KeyboardInterrupt:
            stop.set()
            thread.join()
            self.messages = messages + [{"role": "assistant", "content": "".join(chunks)}]
            raise
        thread.join()
        if errors:
            raise LangadaptError(f"generation failed: {type(errors[0]).__name__}: {errors[0]}") from errors[0]
        answer = "".join(chunks)
        self.messages = messages + [{"role": "assistant", "content": answer}]
        return answer


def load_chat(opts: "ChatOptions") -> tuple:
    """(model, tokenizer, template) of the `chat` arguments: model + adapter, tokenizer, template."""
    from langadapt.model.load import load_model
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.tokenizer.templates import resolve_template
    from langadapt.train.adapter import merge_adapter, read_adapter

    record = read_adapter(opts.adapter) if opts.adapter else None
    spec = opts.model or (record or {}).get("base_source")
    if not spec:
        raise LangadaptError(f"{opts.adapter}: its adaptation.json names no base model; give --model")
    adapter_has_tokenizer = opts.adapter and any(
        (Path(opts.adapter) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    tokenizer = load_tokenizer(opts.adapter if adapter_has_tokenizer else resolve_model_source(spec))
    template = resolve_template(tokenizer, opts.template)
    model = load_model(spec, dtype="float32" if record else None)
    if record:
        model = merge_adapter(model, opts.adapter)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer, template


def chat_loop(session: ChatSession, banner: str, read: Callable[[str], str] | None = None) -> int:
    """The interactive loop: `you> ` prompts (read with `read`, default `input`), `model> ` answers, commands."""
    read = read or input
    print(banner)
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/reset":
                session.reset()
                print("(history cleared)")
            elif cmd == "/system":
                session.set_system(rest.strip())
                print("(system prompt set, history cleared)" if rest.strip() else "(system prompt removed)")
            else:
                print(f"commands: {COMMANDS}")
            continue
        print("model> ", end="", flush=True)
        try:
            session.reply(line, on_token=lambda s: print(s, end="", flush=True))
            print()
        except KeyboardInterrupt:
            print(" [stopped]")


@dataclass
class ChatOptions(Options):
    """Interactive multi-turn chat that streams tokens as they are generated and keeps as much history as fits
    in the context window (oldest turns dropped first). Commands: /reset (forget the history), /system TEXT
    (set the system prompt and reset), /exit. --prompt TEXT, or text piped on stdin, answers once and exits."""

    model: str | None = option(None, metavar="MODEL", help=MODEL_HELP + "; with --adapter, default: the base the "
                                                                        "adapter was trained on")
    adapter: str | None = option(None, metavar="DIR", help="an adapter dir from `pretrain` or `sft`, merged into the "
                                                           "model in memory")
    template: str = option("auto", help="chat template: alpaca, llama2-chat, firefly, chatml, auto (the tokenizer's "
                                        "own) or a .jinja file")
    system: str | None = option(None, metavar="TEXT", help="system prompt")
    prompt: str | None = option(None, metavar="TEXT", help="answer this one message and exit")
    max_new_tokens: int = option(256, help="tokens to generate per answer at most")
    greedy: bool = option(False, help="plain greedy decoding (ignores temperature, top-p, top-k and repetition "
                                      "penalty)")
    temperature: float = option(0.7, help="sampling temperature")
    top_p: float = option(0.9, help="nucleus sampling: keep the top tokens up to this mass")
    top_k: int = option(40, help="sample among the k most likely tokens (0: all)")
    repetition_penalty: float = option(1.1, help="penalty for repeated tokens (1: none)")
    seed: int | None = option(None, help="random seed for sampling")

    def __post_init__(self):
        super().__post_init__()
        if not self.model and not self.adapter:
            raise OptionError("model", "is required (or --adapter, whose adaptation.json names its base model)")
        if self.max_new_tokens < 1:
            raise OptionError("max_new_tokens", f"must be positive, got {self.max_new_tokens}")


def chat_command(opts: ChatOptions) -> int:
    """Chat in the terminal, or answer one message (--prompt or stdin) and exit."""
    one_shot = opts.prompt is not None or not sys.stdin.isatty()
    text = opts.prompt if opts.prompt is not None else (sys.stdin.read().strip() if one_shot else "")
    if one_shot and not text.strip():
        raise LangadaptError("empty message: --prompt or stdin holds no text")
    if opts.seed is not None:
        import torch

        torch.manual_seed(opts.seed)
    model, tokenizer, template = load_chat(opts)
    session = ChatSession(model, tokenizer, template, system=opts.system, gen_kwargs=generation_kwargs(opts))
    if one_shot:
        session.reply(text, on_token=lambda s: print(s, end="", flush=True))
        print()
        return 0
    model_name = opts.model or f"{opts.adapter} (adapter)"
    return chat_loop(session, f"langadapt chat: {model_name}, template {opts.template}, context "
                              f"{session.context} tokens. Commands: {COMMANDS}; Ctrl-C stops an answer.")
