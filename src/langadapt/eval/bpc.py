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
- Only the positions that predict scored targets go through the LM head, and each token's NLL
  is logsumexp(logits) - logit of the target (fp32), summed in fp64: bits per char = NLL / ln 2 /
  characters, bits per byte = NLL / ln 2 / UTF-8 bytes, perplexity = exp(NLL / scored tokens).
- The spread: the text's characters are cut into 20 equal stretches (fewer for texts under 1,000
  characters; none under 100); each token's NLL counts in the stretch where it ends. The stretches'
  bits per char and their standard error (sd / sqrt(n)) are reported. The stretches are the same
  for every tokenizer, so `langadapt run`'s report pairs two models stretch by stretch and gives the
  standard error of their difference. It is the spread of the text, not of training.
- The figure of a local model is cached under `$LANGADAPT_HOME/scores/`, keyed by the model
  directory's fingerprint (its files' sha256), the text's sha256, the settings and the scoring
  rule's version: the same score is never computed twice (`--no-cache` scores again).
"""

from __future__ import annotations

from dataclasses import dataclass

from langadapt.corpus import CORPUS_HELP, ReadingOptions
from langadapt.model.load import MODEL_HELP, ROPE_SCALING_HELP, check_rope_scaling
from langadapt.model.score import score_text_cached, window_spans
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import write_json_atomic


@dataclass
class EvalBpcOptions(Options):
    """Negative log-likelihood of a text, read through the language profile (records joined with newlines),
    scored with a sliding window: each window holds --context tokens and moves by --stride; only the tokens
    not scored by an earlier window count, so each token is scored once with at least context-stride tokens
    before it (except at the start). With a BOS token the first text token is scored after BOS. Reports bits
    per character and per UTF-8 byte (comparable across tokenizers), per-token perplexity (not comparable)
    and tokens/s."""

    model: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    text: list[str] = option([], metavar="PATH", required=True, help=CORPUS_HELP)
    reading: ReadingOptions = embed(ReadingOptions)
    max_chars: int | None = option(None, metavar="N", help="score only the first N characters of the text "
                                                           "(after normalisation)")
    context: int = option(1024, help="tokens per window")
    stride: int = option(512, help="tokens the window moves by (below --context)")
    dtype: str = option("float32", help="model dtype (float32, bfloat16, ...)")
    autocast: str | None = option(None, choices=["bfloat16", "float16"],
                                  help="run the decoder's matmuls in this dtype (about 2x faster on CPUs with AMX "
                                       "and on GPUs; not exact, so figures differ in the third decimal)")
    no_cache: bool = option(False, help="score again even if this model, text and settings were scored before")
    rope_scaling: str | None = option(None, metavar="linear:F|dynamic:F|yarn:F|auto", help=ROPE_SCALING_HELP)
    json: str | None = option(None, metavar="FILE", help="also write the figures to this JSON file")

    def __post_init__(self):
        super().__post_init__()
        if self.max_chars is not None and self.max_chars < 1:
            raise OptionError("max_chars", f"must be positive, got {self.max_chars}")
        window_spans(2, self.context, self.stride)  # bad window arguments fail before any loading
        check_rope_scaling(self.rope_scaling)


def eval_bpc_command(opts: EvalBpcOptions) -> int:
    """Bits per character/byte and per-token perplexity of a text under a model."""
    text = opts.reading.read_text(opts.text, max_chars=opts.max_chars)
    scored = score_text_cached(opts.model, text, context=opts.context, stride=opts.stride, dtype=opts.dtype,
                               autocast=opts.autocast, cache=not opts.no_cache, rope_scaling=opts.rope_scaling)
    result = {"model": str(opts.model), "text": list(opts.text), "lang": opts.reading.profile().code,
              "max_chars": opts.max_chars, "dtype": opts.dtype, "rope_scaling": opts.rope_scaling, **scored}
    if opts.json:
        write_json_atomic(opts.json, result)
    how = f"{result['device']}, {result['threads']} threads, {result['dtype']}" + (
        f", {opts.autocast} autocast" if opts.autocast else "")
    speed = (f"from the score cache (scored {result['scored_at']} at {result['tokens_per_second']} tokens/s, {how})"
             if result["cached"] else f"{result['tokens_per_second']} tokens/s ({result['seconds']} s, {how})")
    spread = (f" (standard error {result['bits_per_char_se']} over {len(result['segment_bits_per_char'])} "
              "equal stretches of the text)" if result.get("bits_per_char_se") is not None else "")
    print(f"  characters      {result['characters']:,} ({result['bytes']:,} UTF-8 bytes)\n"
          f"  tokens          {result['tokens']:,} ({result['tokens_per_char']} per char), "
          f"{result['tokens_scored']:,} scored\n"
          f"  bits per char   {result['bits_per_char']}{spread}\n"
          f"  bits per byte   {result['bits_per_byte']}\n"
          f"  perplexity      {result['perplexity']} per token (not comparable across tokenizers)\n"
          f"  speed           {speed}")
    return 0
