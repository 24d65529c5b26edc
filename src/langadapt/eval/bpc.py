"""Bits per character: how well a model predicts a text, in a unit that does not depend on its tokenizer.

Per-token perplexity cannot compare a model that cuts Tibetan into 2.3 byte tokens per
character with one that uses 0.4 tokens per character. The total negative log-likelihood of
the same text can: divided by ln 2 and by the number of characters (or UTF-8 bytes) it is
bits per character (bits per byte).

Scoring, precisely:

- The text is the records of the input files read through the language profile (normalised),
  joined with "\\n", cut to the first `max_chars` characters. It is encoded with
  `add_special_tokens=False`; if the tokenizer has a BOS token, BOS is put in front so the
  first text token is scored too (without BOS the first token has no context and is not
  scored; `first_token_scored` says which).
- Sliding window over the N positions of that sequence: the first window is positions
  [0, context) and scores every target in it; each next window scores the next `stride`
  targets [s, s + stride) and sees the `context` positions ending there. Every target is
  scored exactly once, each with at least `context - stride` tokens before it (except in
  the first window). `stride` must be smaller than `context`.
- NLL is summed in nats in fp32: bits per char = NLL / ln 2 / characters, bits per byte =
  NLL / ln 2 / UTF-8 bytes, perplexity = exp(NLL / scored tokens).
"""

from __future__ import annotations


import torch

from langadapt.errors import LangadaptError
# The scoring itself lives in langadapt.model.score so that `train` (below `eval`) can use it too.
from langadapt.model.score import bpc_of_text, score_ids, window_spans  # noqa: F401


def read_text(paths, lang: str, field: str = "text", max_chars: int | None = None) -> str:
    """The records of `paths` read through the `lang` profile, joined with "\\n", cut to `max_chars`."""
    from langadapt.corpus import iter_texts
    from langadapt.lang import get_profile

    if max_chars is not None and max_chars < 1:
        raise LangadaptError(f"--max-chars must be positive, got {max_chars}")
    parts, total = [], 0
    for record in iter_texts(paths, profile=get_profile(lang), field=field):
        parts.append(record)
        total += len(record) + 1
        if max_chars is not None and total >= max_chars:
            break
    text = "\n".join(parts)
    return text[:max_chars] if max_chars is not None else text


def run_bpc(args) -> int:
    """`langadapt eval bpc`: bits per character/byte and per-token perplexity of a text under a model."""
    from langadapt.model.load import load_model
    from langadapt.outputs import write_json_atomic
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer

    window_spans(2, args.context, args.stride)  # bad window arguments fail before any loading
    text = read_text(args.text, args.lang, field=args.field, max_chars=args.max_chars)
    source = resolve_model_source(args.model)
    tokenizer = load_tokenizer(str(source))
    model = load_model(str(source), dtype=args.dtype).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    result = {"model": str(args.model), "text": [str(p) for p in args.text], "lang": args.lang,
              "max_chars": args.max_chars, "dtype": args.dtype,
              "device": str(next(model.parameters()).device), "threads": torch.get_num_threads(),
              **bpc_of_text(model, tokenizer, text, context=args.context, stride=args.stride)}
    if args.json:
        write_json_atomic(args.json, result)
    print(f"  characters      {result['characters']:,} ({result['bytes']:,} UTF-8 bytes)\n"
          f"  tokens          {result['tokens']:,} ({result['tokens_per_char']} per char), "
          f"{result['tokens_scored']:,} scored\n"
          f"  bits per char   {result['bits_per_char']}\n"
          f"  bits per byte   {result['bits_per_byte']}\n"
          f"  perplexity      {result['perplexity']} per token (not comparable across tokenizers)\n"
          f"  speed           {result['tokens_per_second']} tokens/s ({result['seconds']} s, "
          f"{result['device']}, {result['threads']} threads, {result['dtype']})")
    return 0
