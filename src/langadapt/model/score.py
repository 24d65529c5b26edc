"""Sliding-window negative log-likelihood and bits per character of a text under a causal LM.

Pure scoring functions, below the `eval` and `train` stages so that both can use them:
`langadapt eval bpc` reports them, `langadapt pretrain` logs held-out bits per char at each
eval. See `langadapt.eval.bpc` for the exact scoring rules.
"""

from __future__ import annotations

import inspect
import math
import sys
import time

import torch

from langadapt.errors import LangadaptError
from langadapt.model.load import model_context


def window_spans(n_positions: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, first scored position) covering targets 1..n_positions-1 exactly once."""
    if context < 2:
        raise LangadaptError(f"--context must be at least 2 tokens, got {context}")
    if not 1 <= stride < context:
        raise LangadaptError(f"--stride must be between 1 and context-1 ({context - 1}), got {stride}: each "
                             "window needs the token before its first scored one")
    if n_positions < 2:
        return []
    end = min(context, n_positions)
    spans = [(0, end, 1)]
    while end < n_positions:
        start, end = end, min(end + stride, n_positions)
        spans.append((max(0, end - context), end, start))
    return spans


def score_ids(model, ids: list[int], context: int, stride: int, progress: bool = True) -> tuple[float, int]:
    """Summed NLL (nats) of `ids[1:]` given what precedes each, with a sliding window; returns (nll, scored)."""
    from tqdm import tqdm

    spans = window_spans(len(ids), context, stride)
    device = next(model.parameters()).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    nll, scored = 0.0, 0
    bar = tqdm(total=max(len(ids) - 1, 0), unit="tok", desc="scoring", file=sys.stderr, disable=not progress)
    with torch.inference_mode():
        for begin, end, start in spans:
            window = seq[begin:end].unsqueeze(0)
            n = end - start  # targets scored in this window: positions start..end-1
            if keep_logits:  # only the logits that predict scored targets (saves the LM head's work)
                logits = model(window, logits_to_keep=n + 1).logits[0, :-1]
            else:
                logits = model(window).logits[0, start - begin - 1:end - begin - 1]
            targets = seq[start:end]
            nll += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            scored += n
            bar.update(n)
    bar.close()
    return nll, scored


def bpc_of_text(model, tokenizer, text: str, context: int = 1024, stride: int = 512,
                progress: bool = True) -> dict:
    """Score `text` under `model` and return chars, bytes, tokens, NLL, bits per char/byte, perplexity, speed."""
    if not text:
        raise LangadaptError("the text to score is empty")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_text_tokens = len(ids)
    rows = model.get_input_embeddings().weight.shape[0]
    if ids and max(ids) >= rows:
        raise LangadaptError(f"the tokenizer produces id {max(ids)} but the model has only {rows} embedding rows; "
                             "score a model with the tokenizer it was built for")
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids = [bos] + ids
    max_pos = model_context(model)
    if max_pos is not None and context > max_pos:
        raise LangadaptError(f"--context {context} is longer than the model's {max_pos} positions "
                             "(--rope-scaling extends them)")
    start = time.perf_counter()
    nll, scored = score_ids(model, ids, context, stride, progress=progress)
    seconds = time.perf_counter() - start
    chars, n_bytes = len(text), len(text.encode("utf-8"))
    return {
        "characters": chars,
        "bytes": n_bytes,
        "tokens": n_text_tokens,
        "tokens_per_char": round(n_text_tokens / chars, 4),
        "tokens_scored": scored,
        "first_token_scored": bos is not None,
        "nll_nats": round(nll, 4),
        "bits_per_char": round(nll / math.log(2) / chars, 4),
        "bits_per_byte": round(nll / math.log(2) / n_bytes, 4),
        "perplexity": round(math.exp(nll / scored), 4) if scored else None,
        "context": context,
        "stride": stride,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(scored / seconds, 1) if seconds > 0 else None,
    }
