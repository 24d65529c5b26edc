"""Sliding-window negative log-likelihood and bits per character of a text under a causal LM.

Pure scoring functions, below the `eval` and `train` stages so that both can use them:
`langadapt eval bpc` reports them, `langadapt pretrain` logs held-out bits per char at each
eval. See `langadapt.eval.bpc` for the exact scoring rules.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from langadapt.errors import LangadaptError
from langadapt.model.load import model_context

# The version of the scoring rule (windows, BOS, sums, rounding); part of the score cache's key.
# Bump it when a change makes the same model, text and settings give another figure.
SCORE_RULE_VERSION = 2  # 2: the standard error and the stretches' figures


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


def score_ids(model, ids: list[int], context: int, stride: int, progress: bool = True,
              batch_tokens: int = 4096, autocast: str | None = None) -> tuple[float, int]:
    """Summed NLL (nats) of `ids[1:]` given what precedes each, with a sliding window; returns (nll, scored).
    The sum of `target_nlls`."""
    nlls = target_nlls(model, ids, context, stride, progress=progress, batch_tokens=batch_tokens, autocast=autocast)
    return nlls.sum().item(), max(len(ids) - 1, 0)


def target_nlls(model, ids: list[int], context: int, stride: int, progress: bool = True,
                batch_tokens: int = 4096, autocast: str | None = None) -> torch.Tensor:
    """NLL (nats, fp64) of each position of `ids` given what precedes it, with a sliding window
    (position 0, which nothing predicts, is 0).

    Windows of equal length go through the model together (up to `batch_tokens` tokens per forward);
    the LM head runs only on the positions that predict scored targets, and the NLL is
    logsumexp(logits) - logit of the target, in fp32 chunks.

    `autocast` ("bfloat16" or "float16") runs the decoder's matmuls in that dtype under
    `torch.autocast` (residual stream, norms and the LM head stay in the model's dtype): about 2x
    faster on CPUs with AMX and on GPUs, but not exact. None (the default) is exact.
    """
    from tqdm import tqdm

    spans = window_spans(len(ids), context, stride)
    device = next(model.parameters()).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    scored_logits = _autocast_logits(model, seq, autocast) if autocast else _model_logits(model)
    nlls = torch.zeros(len(ids), dtype=torch.float64)
    bar = tqdm(total=max(len(ids) - 1, 0), unit="tok", desc="scoring", file=sys.stderr, disable=not progress)
    with torch.inference_mode():
        for batch in _window_batches(spans, batch_tokens, _vocab_rows(model)):
            windows = torch.stack([seq[begin:end] for begin, end, _ in batch])  # all the same length
            keep = max(end - start for _, end, start in batch) + 1  # positions start-1 .. end-2 predict targets
            logits = scored_logits(windows, keep)
            for row, (begin, end, start) in zip(logits, batch):
                nlls[start:end] = _nll_rows(row[start - end - 1:-1], seq[start:end]).double().cpu()
                bar.update(end - start)
    bar.close()
    return nlls


def _model_logits(model):
    """(windows, keep) -> the model's logits at the last `keep` positions of each window."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return lambda windows, keep: model(windows, logits_to_keep=keep).logits  # the LM head on those only
    return lambda windows, keep: model(windows).logits[:, -keep:]


def _autocast_logits(model, seq: torch.Tensor, dtype: str):
    """As `_model_logits`, with the decoder under `torch.autocast(dtype)` and the LM head outside it
    (bf16 logits would cost more accuracy than the rest of the bf16 computation together).

    Refuses a model whose logits are not its LM head applied to its decoder's last hidden state
    (e.g. logit soft-capping or scaling), checked on the first tokens of `seq`.
    """
    if dtype not in ("bfloat16", "float16"):
        raise LangadaptError(f"autocast must be bfloat16 or float16, got '{dtype}'")
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    with torch.inference_mode():
        probe = seq[None, :16]
        split = head(decoder(input_ids=probe).last_hidden_state).float() if head is not None else None
        whole = model(probe).logits.float()
    if split is None or not torch.allclose(split, whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item()):
        raise LangadaptError(f"{type(model).__name__}: its logits are not the LM head applied to the last hidden "
                             "state, so it cannot be scored under autocast; score it without autocast")

    def logits(windows, keep):
        with torch.autocast(seq.device.type, dtype=getattr(torch, dtype)):
            hidden = decoder(input_ids=windows).last_hidden_state
        return head(hidden[:, -keep:].to(head.weight.dtype))
    return logits


def _window_batches(spans: list[tuple[int, int, int]], batch_tokens: int,
                    vocab: int) -> list[list[tuple[int, int, int]]]:
    """Consecutive windows grouped for one forward each: at most `batch_tokens` tokens and about
    256 MiB of fp32 logits per group. The first window (scoring all its positions) goes alone, so
    the others share a `keep` of about `stride` positions."""
    if not spans:
        return []
    length = spans[0][1] - spans[0][0]  # every window has this length (see window_spans)
    rows = max(end - start for _, end, start in spans[1:]) + 1 if len(spans) > 1 else length
    size = max(1, min(batch_tokens // length, (1 << 26) // (rows * vocab)))
    rest = spans[1:]
    return [spans[:1]] + [rest[i:i + size] for i in range(0, len(rest), size)]


def _nll_rows(logits: torch.Tensor, targets: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """-log softmax(logits)[target] of each row, in fp32 chunks of `rows` (no full log_softmax)."""
    out = []
    for chunk, target in zip(logits.split(rows), targets.split(rows)):
        chunk = chunk.float()
        out.append(torch.logsumexp(chunk, -1) - chunk.gather(1, target[:, None])[:, 0])
    return torch.cat(out)


def _vocab_rows(model) -> int:
    head = model.get_output_embeddings()
    return (head.weight if head is not None else model.get_input_embeddings().weight).shape[0]


def bpc_of_text(model, tokenizer, text: str, context: int = 1024, stride: int = 512,
                progress: bool = True, autocast: str | None = None) -> dict:
    """Score `text` under `model` and return chars, bytes, tokens, NLL, bits per char/byte, perplexity, speed.

    `autocast`: see `score_ids` (None, the default, is the exact computation).
    """
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
    nlls = target_nlls(model, ids, context, stride, progress=progress, autocast=autocast)
    nll, scored = nlls.sum().item(), max(len(ids) - 1, 0)
    seconds = time.perf_counter() - start
    chars, n_bytes = len(text), len(text.encode("utf-8"))
    ends = _token_ends(tokenizer, text)
    segments = segment_bits_per_char(nlls[len(ids) - n_text_tokens:].numpy(), ends, chars) if ends is not None else []
    return {
        "characters": chars,
        "bytes": n_bytes,
        "tokens": n_text_tokens,
        "tokens_per_char": round(n_text_tokens / chars, 4),
        "tokens_scored": scored,
        "first_token_scored": bos is not None,
        "nll_nats": round(nll, 4),
        "bits_per_char": round(nll / math.log(2) / chars, 4),
        "bits_per_char_se": round(standard_error(segments), 4) if len(segments) > 1 else None,
        "segment_bits_per_char": [round(x, 4) for x in segments],
        "bits_per_byte": round(nll / math.log(2) / n_bytes, 4),
        "perplexity": round(math.exp(nll / scored), 4) if scored else None,
        "context": context,
        "stride": stride,
        "autocast": autocast,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(scored / seconds, 1) if seconds > 0 else None,
    }


# ----------------------------------------------------------------------------- spread

# The text's characters are cut into this many equal stretches for the standard error (fewer when
# the stretches would be under SEGMENT_MIN_CHARS characters).
SEGMENTS = 20
SEGMENT_MIN_CHARS = 50


def _token_ends(tokenizer, text: str) -> np.ndarray | None:
    """The character offset where each token of `text` ends, or None for a tokenizer without offsets."""
    try:
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return None
    return np.array([end for _, end in offsets], dtype=np.int64)


def segment_bits_per_char(token_nlls: np.ndarray, token_ends: np.ndarray, characters: int,
                          segments: int = SEGMENTS) -> list[float]:
    """Bits per character of each of `segments` equal stretches of the text's characters: a token's
    NLL (nats) counts in the stretch where the token ends. The stretches are the same for any
    tokenizer, so two models' figures on the same text pair up stretch by stretch."""
    segments = min(segments, characters // SEGMENT_MIN_CHARS)
    if segments < 2 or len(token_nlls) != len(token_ends):
        return []
    bounds = np.linspace(0, characters, segments + 1).round().astype(np.int64)
    which = np.clip(np.searchsorted(bounds[1:], token_ends, side="left"), 0, segments - 1)
    nats = np.bincount(which, weights=token_nlls, minlength=segments)
    return (nats / math.log(2) / np.diff(bounds)).tolist()


def standard_error(segment_values: list[float]) -> float:
    """The standard error of the mean of equal stretches' figures (or of their differences between two
    models, for a paired comparison): sd / sqrt(n). A rough figure: it treats the stretches as
    independent samples of such text. It is the spread of the text, not of training: another seed
    moves a trained model too."""
    values = np.asarray(segment_values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values)))


# ----------------------------------------------------------------------------- score cache

def score_cache_key(model_fingerprint: str, text: str, context: int, stride: int, dtype: str | None,
                    autocast: str | None = None, device: str = "cpu", rope_scaling: str | None = None) -> dict:
    """What a score depends on: the model (with its tokenizer), the text, the settings and the rule."""
    return {"rule": SCORE_RULE_VERSION, "model": model_fingerprint,
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "characters": len(text),
            "context": context, "stride": stride, "dtype": dtype, "autocast": autocast, "device": device,
            "rope_scaling": rope_scaling}


def _cache_path(key: dict) -> Path:
    from langadapt.sources import langadapt_home

    blob = json.dumps(key, sort_keys=True).encode()
    return langadapt_home() / "scores" / f"{hashlib.sha256(blob).hexdigest()[:32]}.json"


def cached_score(key: dict) -> dict | None:
    """The result stored under `key` in `$LANGADAPT_HOME/scores/`, or None."""
    try:
        record = json.loads(_cache_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record["result"] if isinstance(record, dict) and record.get("key") == key else None


def store_score(key: dict, result: dict) -> None:
    """Store `result` under `key` (atomically: a reader sees the old file or the new one)."""
    from langadapt.outputs import write_json_atomic

    path = _cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "result": result})


def scoring_threads() -> int:
    """Cap torch's intra-op threads at the CPUs this process may run on (torch counts the whole
    machine, which oversubscribes a container or a taskset); OMP_NUM_THREADS, if set, wins."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)
    return torch.get_num_threads()


def score_text_cached(model_source, text: str, context: int = 1024, stride: int = 512,
                      dtype: str | None = "float32", autocast: str | None = None, cache: bool = True,
                      progress: bool = True, rope_scaling: str | None = None) -> dict:
    """`bpc_of_text` of the model at `model_source` (alias, .gguf, dir, hub id) with its own tokenizer,
    plus device, threads, scored_at and `cached`.

    With `cache`, a local model's result is looked up first under (model fingerprint, text, settings,
    rule version) and stored after scoring, so the same score is never computed twice; the model
    is then not even loaded. Hub ids are not cached (no local files to fingerprint).
    """
    from langadapt.model.fingerprint import model_fingerprint
    from langadapt.model.load import load_model
    from langadapt.sources import resolve_model_source
    from langadapt.tokenizer.load import load_tokenizer

    source = resolve_model_source(model_source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    key = None
    if cache and isinstance(source, Path):
        key = score_cache_key(model_fingerprint(source), text, context, stride, dtype, autocast, device,
                              rope_scaling)
        hit = cached_score(key)
        if hit is not None:
            return {**hit, "cached": True}
    tokenizer = load_tokenizer(str(source))
    model = load_model(str(source), dtype=dtype, rope_scaling=rope_scaling).eval().to(device)
    result = {"device": device, "threads": scoring_threads(),
              "scored_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **bpc_of_text(model, tokenizer, text, context=context, stride=stride, progress=progress,
                            autocast=autocast)}
    if key is not None:
        store_score(key, result)
    return {**result, "cached": False}
