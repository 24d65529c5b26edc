"""`langadapt chat`: a terminal chat that streams each character as it is generated and keeps what history fits.

- The model (plus an adapter merged in memory), its tokenizer and chat template are loaded once
  (`engine.load_served_model`, the same as `serve`) and answer through the same `Engine`: the
  UTF-8 mask (no broken characters), text a character at a time (Tibetan too, which has no
  spaces to wait for), the template's end-of-turn token as a stop.
- `fit_history` keeps the prompt plus `--max-new-tokens` within the context window: the oldest
  user/assistant pairs go first; the system message and the current message stay (the current
  one cut from the left if it alone is too long).
- Interactive on a terminal (`/reset`, `/system TEXT`, `/exit`); `--prompt` or piped stdin
  answers once, printing only the answer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from langadapt.errors import LangadaptError
from langadapt.model.generate import Sampling
from langadapt.model.load import MODEL_HELP
from langadapt.options import Options, OptionError, embed, option
from langadapt.serve.engine import Engine, ModelSourceOptions, load_served_model

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



def sampling_of(opts: "ChatOptions") -> Sampling:
    """The sampling settings of the chat options."""
    if opts.greedy:
        return Sampling(max_new_tokens=opts.max_new_tokens, temperature=0.0, seed=opts.seed)
    return Sampling(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                    top_k=opts.top_k, repetition_penalty=opts.repetition_penalty, seed=opts.seed)


class ChatSession:
    """A conversation with the model behind `engine`: `messages` (system first, if any) and `reply(text)`."""

    def __init__(self, engine: Engine, system: str | None = None, sampling: Sampling | None = None,
                 warn: Callable[[str], None] = lambda s: print(s, file=sys.stderr)):
        self.engine, self.warn = engine, warn
        self.sampling = sampling or Sampling(max_new_tokens=256)
        self.context = engine.context
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_system(self, text: str) -> None:
        self.system = text or None
        self.reset()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.engine.chat_prompt(messages)

    def reply(self, text: str, on_token: Callable[[str], None] | None = None) -> str:
        """Answer `text` (streamed through `on_token`); the turn joins the history. Ctrl-C stops the
        answer, keeps what was said, and raises KeyboardInterrupt."""
        if not text.strip():
            raise LangadaptError("empty message")
        budget = self.context - self.sampling.max_new_tokens
        if budget <= 0:
            raise LangadaptError(f"--max-new-tokens {self.sampling.max_new_tokens} leaves no room for the "
                                 f"prompt in the model's context of {self.context} tokens")
        messages = fit_history(self.messages + [{"role": "user", "content": text}],
                               lambda m: len(self.prompt_ids(m)), budget)
        if messages[-1]["content"] != text:
            self.warn(f"langadapt: the message is too long for the context window; kept its last "
                      f"{len(messages[-1]['content'])} of {len(text)} characters")
        chunks: list[str] = []

        def on_text(piece: str) -> None:
            chunks.append(piece)
            if on_token:
                on_token(piece)

        try:
            self.engine.run(self.prompt_ids(messages), self.sampling, self.engine.chat_stop_ids, on_text)
        finally:  # an interrupted answer joins the history as far as it got
            self.messages = messages + [{"role": "assistant", "content": "".join(chunks)}]
        return "".join(chunks)

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
    """Interactive multi-turn chat that streams each character as it is generated and keeps as much history as
    fits in the context window (oldest turns dropped first). Commands: /reset (forget the history), /system TEXT
    (set the system prompt and reset), /exit. --prompt TEXT, or text piped on stdin, answers once and exits."""

    model: str | None = option(None, metavar="MODEL", help=MODEL_HELP + "; with --adapter, default: the base the "
                                                                        "adapter was trained on")
    source: ModelSourceOptions = embed(ModelSourceOptions)
    system: str | None = option(None, metavar="TEXT", help="system prompt")
    prompt: str | None = option(None, metavar="TEXT", help="answer this one message and exit")
    max_new_tokens: int = option(256, help="tokens to generate per answer at most")
    greedy: bool = option(False, help="plain greedy decoding (ignores temperature, top-p, top-k and repetition "
                                      "penalty)")
    temperature: float = option(0.7, help="sampling temperature")
    top_p: float = option(0.9, help="nucleus sampling: keep the top tokens up to this mass")
    top_k: int = option(40, help="sample among the k most likely tokens (0: all)")
    repetition_penalty: float = option(1.1, help="penalty for repeated tokens (1: none)")
    seed: int | None = option(None, help="random seed for sampling (each answer starts from it)")

    def __post_init__(self):
        super().__post_init__()
        if not self.model and not self.source.adapter:
            raise OptionError("model", "is required (or --adapter, whose adaptation.json names its base model)")
        if self.max_new_tokens < 1:
            raise OptionError("max_new_tokens", f"must be positive, got {self.max_new_tokens}")


def chat_command(opts: ChatOptions) -> int:
    """Chat in the terminal, or answer one message (--prompt or stdin) and exit."""
    one_shot = opts.prompt is not None or not sys.stdin.isatty()
    text = opts.prompt if opts.prompt is not None else (sys.stdin.read().strip() if one_shot else "")
    if one_shot and not text.strip():
        raise LangadaptError("empty message: --prompt or stdin holds no text")
    model, tokenizer, template = load_served_model(opts.model, opts.source)
    engine = Engine(model, tokenizer, template, max_queue=1)
    try:
        session = ChatSession(engine, system=opts.system, sampling=sampling_of(opts))
        if one_shot:
            session.reply(text, on_token=lambda s: print(s, end="", flush=True))
            print()
            return 0
        model_name = opts.model or f"{opts.source.adapter} (adapter)"
        return chat_loop(session, f"langadapt chat: {model_name}, template {opts.source.template}, context "
                                  f"{session.context} tokens. Commands: {COMMANDS}; Ctrl-C stops an answer.")
    finally:
        engine.close()
