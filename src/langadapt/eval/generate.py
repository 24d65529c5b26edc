"""`langadapt eval generate`: answers of a model to held-out instructions, with generation speed.

Each conversation of the instruction file (any format `sft` reads) is cut before its first
assistant turn; the model answers that prompt, rendered with its chat template (the one `sft`
trained with travels in the tokenizer), greedily, until an end-of-turn token or
`--max-new-tokens`. The answers, the references and the speed (tokens and target-language
characters per second) are written to `--json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from langadapt.corpus import ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.model.generate import decode_complete, Utf8Mask, Utf8Table
from langadapt.model.load import MODEL_HELP, load_model
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import write_json_atomic
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.tokenizer.templates import render, resolve_template, stop_token_ids
from langadapt.train.instructions import read_conversations


@dataclass
class EvalGenerateOptions(Options):
    """Read instruction data (any format `sft` reads), cut each conversation before its first answer, let
    the model answer greedily with its chat template, and write the answers with the references and the
    generation speed (tokens/s and target-language characters/s)."""

    model: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    data: list[str] = option([], metavar="PATH", required=True, help="instruction files (.json/.jsonl)")
    reading: ReadingOptions = embed(ReadingOptions)
    template: str = option("auto", help="chat template: auto (the model's own, which `sft` sets to the one it "
                                        "trained with), alpaca, llama2-chat, firefly, chatml or a .jinja file")
    limit: int = option(0, metavar="N", help="answer at most N conversations (0: all)")
    max_new_tokens: int = option(128, help="tokens to generate per answer at most")
    repetition_penalty: float = option(1.0, help="penalty for repeated tokens (1: none)")
    json: str | None = option(None, metavar="FILE", help="write the answers and figures to this JSON file")

    def __post_init__(self):
        super().__post_init__()
        if self.limit < 0:
            raise OptionError("limit", f"must be 0 (all) or positive, got {self.limit}")
        if self.max_new_tokens < 1:
            raise OptionError("max_new_tokens", f"must be positive, got {self.max_new_tokens}")


def prompts_and_references(conversations: list[list[dict]]) -> list[tuple[list[dict], str]]:
    """(messages before the first assistant turn, that turn's content) of each conversation."""
    out = []
    for messages in conversations:
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append((messages[:first], messages[first]["content"]))
    return out


def generate_answers(model, tokenizer, template: str, prompts: list[list[dict]], max_new_tokens: int,
                     repetition_penalty: float = 1.0) -> list[dict]:
    """Greedy answers to `prompts`, each with its token count and seconds."""
    stops = stop_token_ids(tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    utf8 = Utf8Table(tokenizer, width=model.get_output_embeddings().weight.shape[0])
    answers = []
    for messages in prompts:
        ids = tokenizer(render(tokenizer, template, messages, add_generation_prompt=True), add_special_tokens=False,
                        return_tensors="pt").to(model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=pad, repetition_penalty=repetition_penalty,
                                 logits_processor=[Utf8Mask(utf8)])
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        answers.append({"answer": decode_complete(tokenizer, utf8, new).strip(), "tokens": len(new),
                        "seconds": time.perf_counter() - start})
    return answers


def eval_generate_command(opts: EvalGenerateOptions) -> int:
    """Answer the instructions and write the answers, the references and the speed."""
    conversations, _ = read_conversations(opts.data)
    pairs = prompts_and_references(conversations[:opts.limit or None])
    source = resolve_model_source(opts.model)
    tokenizer = load_tokenizer(str(source))
    try:
        template = resolve_template(tokenizer, opts.template)
    except LangadaptError as e:
        raise OptionError("template", f"template {opts.template}: {e}") from e
    model = load_model(str(source), dtype="float32").eval()
    answers = generate_answers(model, tokenizer, template, [p for p, _ in pairs], opts.max_new_tokens,
                               opts.repetition_penalty)
    profile = opts.reading.profile()
    seconds = sum(a["seconds"] for a in answers)
    target_chars = sum(sum(1 for ch in a["answer"] if profile.is_target_char(ch)) for a in answers)
    result = {
        "model": opts.model, "data": opts.data, "template": opts.template, "max_new_tokens": opts.max_new_tokens,
        "samples": [{"prompt": p[-1]["content"], "reference": ref, **a} for (p, ref), a in zip(pairs, answers)],
        "tokens_per_second": round(sum(a["tokens"] for a in answers) / seconds, 2) if seconds else None,
        "target_chars_per_second": round(target_chars / seconds, 2) if seconds else None,
        "seconds": round(seconds, 2),
    }
    if opts.json:
        write_json_atomic(opts.json, result)
    for s in result["samples"]:
        print(f"> {s['prompt'][:200]}\n{s['answer'][:300]}\n")
    print(f"{len(answers)} answers in {seconds:.1f} s: {result['tokens_per_second']} tokens/s, "
          f"{result['target_chars_per_second']} {profile.code} characters/s")
    return 0
