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
from pathlib import Path

from langadapt.errors import LangadaptError

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
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


def generation_kwargs(args) -> dict:
    """The `model.generate` options of the parsed `chat` arguments."""
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.greedy:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "repetition_penalty": args.repetition_penalty}


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """EOS plus the template's end-of-turn marker when it is a single token of the vocabulary."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[m] for m in END_OF_TURN if m in template and m in vocab]
    return list(dict.fromkeys(ids))


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


def load_chat(args) -> tuple:
    """(model, tokenizer, template) of the `chat` arguments: model + adapter, tokenizer, template."""
    from langadapt.model.load import load_model
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer
    from langadapt.tokenizer.templates import resolve_template
    from langadapt.train.adapter import merge_adapter, read_adapter

    record = read_adapter(args.adapter) if args.adapter else None
    spec = args.model or (record or {}).get("base_source")
    if not spec:
        raise LangadaptError("chat needs --model (or --adapter whose adaptation.json names its base model)")
    adapter_has_tokenizer = args.adapter and any(
        (Path(args.adapter) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    tokenizer = load_tokenizer(args.adapter if adapter_has_tokenizer else resolve_model_source(spec))
    template = resolve_template(tokenizer, args.template)
    model = load_model(spec, dtype="float32" if record else None)
    if record:
        model = merge_adapter(model, args.adapter)
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


def run_chat(args) -> int:
    """CLI handler of `langadapt chat`."""
    one_shot = args.prompt is not None or not sys.stdin.isatty()
    text = args.prompt if args.prompt is not None else (sys.stdin.read().strip() if one_shot else "")
    if one_shot and not text.strip():
        raise LangadaptError("empty message: --prompt or stdin holds no text")
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    model, tokenizer, template = load_chat(args)
    session = ChatSession(model, tokenizer, template, system=args.system, gen_kwargs=generation_kwargs(args))
    if one_shot:
        session.reply(text, on_token=lambda s: print(s, end="", flush=True))
        print()
        return 0
    model_name = args.model or f"{args.adapter} (adapter)"
    return chat_loop(session, f"langadapt chat: {model_name}, template {args.template}, context "
                              f"{session.context} tokens. Commands: {COMMANDS}; Ctrl-C stops an answer.")
