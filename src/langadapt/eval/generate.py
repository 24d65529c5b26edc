"""`langadapt eval generate`: answers of a model to held-out instructions, scored per task, with generation speed.

Each conversation of the instruction file (any format `sft` reads) is cut before its first
assistant turn; the model answers that prompt, rendered with its chat template (the one `sft`
trained with travels in the tokenizer), greedily, until an end-of-turn token or
`--max-new-tokens`, decoded together with continuous batching (`--batch-size` at a time).

Tasks come from each record's `task` field (Firefly's `kind`); records without one belong to
`--task`. Each task is scored by ROUGE-L F1 x 100 in the language's units (`eval.rouge`), or by
exact match x 100 for classification tasks (a name containing "classif", or `--exact-match`);
"Avg" is the unweighted mean over tasks, as Tibetan-Alpaca reports it. Speed: generated tokens and
target-language characters per second of generation. Every prediction goes to `--predictions`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from langadapt.corpus import ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.eval import set_offline
from langadapt.eval.rouge import UNITS, exact_match, rouge_l, units
from langadapt.model.batch import BatchDecoder, Sequence, generate_all
from langadapt.model.generate import Sampling, Utf8Table
from langadapt.model.load import MODEL_HELP, load_model
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import write_json_atomic, write_jsonl_atomic
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer
from langadapt.tokenizer.templates import render, resolve_template, stop_token_ids
from langadapt.train.instructions import read_conversations


@dataclass
class EvalGenerateOptions(Options):
    """Read instruction data (any format `sft` reads; a "task" or "kind" field groups it into tasks), cut each
    conversation before its first answer, let the model answer greedily with its chat template, and score
    each task: ROUGE-L F1 x 100 in the language's units (Chinese characters, Tibetan syllables, words), exact
    match for classification tasks, and "Avg" over tasks. Also reports the generation speed (tokens/s and
    target-language characters/s) and writes every prediction."""

    model: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    data: list[str] = option([], metavar="PATH", required=True, help="instruction files (.json/.jsonl)")
    reading: ReadingOptions = embed(ReadingOptions)
    template: str = option("auto", help="chat template: auto (the model's own, which `sft` sets to the one it "
                                        "trained with), alpaca, llama2-chat, firefly, chatml or a .jinja file")
    task: str = option("all", help="the task of records without a 'task' (or 'kind') field")
    exact_match: list[str] = option([], metavar="TASK", help="tasks scored by exact match (besides those whose "
                                                             "name contains 'classif')")
    units: str = option("lang", choices=UNITS, help="ROUGE-L units: lang (Chinese characters, Tibetan syllables, "
                                                    "whitespace words) or jieba (jieba words, needs jieba)")
    limit: int = option(0, metavar="N", help="answer at most N conversations of each task (0: all)")
    max_new_tokens: int = option(128, help="tokens to generate per answer at most")
    repetition_penalty: float = option(1.0, help="penalty for repeated tokens (1: none)")
    batch_size: int = option(8, help="prompts decoded together (continuous batching: one joins as another ends)")
    json: str | None = option(None, metavar="FILE", help="write the scores, figures and answers to this JSON file")
    predictions: str | None = option(None, metavar="FILE", help="write every prediction to this JSONL file")

    def __post_init__(self):
        super().__post_init__()
        if self.limit < 0:
            raise OptionError("limit", f"must be 0 (all) or positive, got {self.limit}")
        if self.max_new_tokens < 1:
            raise OptionError("max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be positive, got {self.batch_size}")


def prompts_and_references(conversations: list[list[dict]]) -> list[tuple[list[dict], str]]:
    """(messages before the first assistant turn, that turn's content) of each conversation."""
    out = []
    for messages in conversations:
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append((messages[:first], messages[first]["content"]))
    return out


def generate_answers(model, tokenizer, template: str, prompts: list[list[dict]], max_new_tokens: int,
                     repetition_penalty: float = 1.0, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """Greedy answers to `prompts` (in their order), each with its token count and its share of the seconds.

    Prompts are decoded `batch_size` at a time with continuous batching (`model.batch`: a prompt joins
    as soon as another's answer ends), shortest first; each answer ends at its first stop token (EOS
    or the template's end of turn), which counts as a generated token, and is decoded up to its last
    complete character (never a U+FFFD for bytes cut by the token limit)."""
    from tqdm import tqdm

    stops = stop_token_ids(tokenizer, template)
    utf8 = Utf8Table(tokenizer, width=model.get_output_embeddings().weight.shape[0])
    encoded = [tokenizer(render(tokenizer, template, messages, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for messages in prompts]
    bar = tqdm(total=len(encoded), unit="answer", desc="generating", file=sys.stderr, disable=not progress)
    sampling = Sampling(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    sequences = [Sequence(ids, sampling, stops) for ids in encoded]
    decoder = BatchDecoder(model, tokenizer, utf8)
    begin = time.perf_counter()
    generate_all(decoder, sorted(sequences, key=lambda s: len(s.prompt_ids)), max_batch=batch_size,
                 on_end=lambda _: bar.update(1))
    seconds = time.perf_counter() - begin
    bar.close()
    return [{"answer": s.result.text.strip(), "tokens": s.result.completion_tokens, "seconds": seconds / len(encoded)}
            for s in sequences]


def is_classification(task: str, exact: list[str]) -> bool:
    return task in exact or "classif" in task.lower()


def score_tasks(samples: list[dict], profile, mode: str = "lang", exact: list[str] = ()) -> dict:
    """Per task: n, metric and score x 100 (the mean over its samples), plus "Avg" over tasks.

    Each sample has "task", "answer" and "reference"; its own "score" (0-100) is added to it."""
    tasks: dict[str, list[float]] = {}
    for s in samples:
        if is_classification(s["task"], list(exact)):
            s["metric"], s["score"] = "exact_match", 100.0 * exact_match(s["answer"], s["reference"])
        else:
            s["metric"] = "rouge_l"
            s["score"] = 100 * rouge_l(units(s["answer"], profile, mode), units(s["reference"], profile, mode))
        tasks.setdefault(s["task"], []).append(s["score"])
    per_task = {t: {"n": len(v), "metric": "exact_match" if is_classification(t, list(exact)) else "rouge_l",
                    "score": round(sum(v) / len(v), 2)} for t, v in tasks.items()}
    return {"tasks": per_task,
            "Avg": round(sum(t["score"] for t in per_task.values()) / len(per_task), 2) if per_task else None}


def eval_generate_command(opts: EvalGenerateOptions) -> int:
    """Answer the instructions, score each task and write the answers, the scores and the speed."""
    set_offline()
    conversations, stats = read_conversations(opts.data)
    chosen: dict[str, list[tuple[list[dict], str]]] = {}
    for (prompt, reference), task in zip(prompts_and_references(conversations), stats.tasks):
        pairs = chosen.setdefault(task or opts.task, [])
        if not opts.limit or len(pairs) < opts.limit:
            pairs.append((prompt, reference))
    items = [(task, p, ref) for task, pairs in chosen.items() for p, ref in pairs]
    source = resolve_model_source(opts.model)
    tokenizer = load_tokenizer(str(source))
    try:
        template = resolve_template(tokenizer, opts.template)
    except LangadaptError as e:
        raise OptionError("template", f"template {opts.template}: {e}") from e
    model = load_model(str(source), dtype="float32").eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    answers = generate_answers(model, tokenizer, template, [p for _, p, _ in items], opts.max_new_tokens,
                               opts.repetition_penalty, opts.batch_size, progress=True)
    profile = opts.reading.profile()
    samples = [{"task": task, "prompt": p[-1]["content"], "reference": ref, **a}
               for (task, p, ref), a in zip(items, answers)]
    scores = score_tasks(samples, profile, opts.units, opts.exact_match)
    seconds = sum(a["seconds"] for a in answers)
    target_chars = sum(sum(1 for ch in a["answer"] if profile.is_target_char(ch)) for a in answers)
    result = {
        "model": opts.model, "data": opts.data, "template": opts.template, "lang": profile.code, "units": opts.units,
        "max_new_tokens": opts.max_new_tokens, "limit": opts.limit, "batch_size": opts.batch_size, **scores,
        "tokens_per_second": round(sum(a["tokens"] for a in answers) / seconds, 2) if seconds else None,
        "target_chars_per_second": round(target_chars / seconds, 2) if seconds else None,
        "seconds": round(seconds, 2), "samples": samples,
    }
    if opts.predictions:
        write_jsonl_atomic(opts.predictions, samples)
    if opts.json:
        write_json_atomic(opts.json, result)
    for s in samples[:3]:
        print(f"> {s['prompt'][:200]}\n{s['answer'][:300]}\n")
    print(format_task_table(result))
    print(f"{len(answers)} answers in {seconds:.1f} s: {result['tokens_per_second']} tokens/s, "
          f"{result['target_chars_per_second']} {profile.code} characters/s")
    return 0


def format_task_table(result: dict) -> str:
    """task, n, metric, score; then Avg."""
    lines = [f"{'task':32s} {'n':>5s} {'metric':12s} {'score':>7s}"]
    lines += [f"{t:32s} {s['n']:5d} {s['metric']:12s} {s['score']:7.2f}" for t, s in result["tasks"].items()]
    if result["Avg"] is not None:
        lines.append(f"{'Avg':32s} {'':5s} {'':12s} {result['Avg']:7.2f}")
    return "\n".join(lines)
