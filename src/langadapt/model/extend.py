"""Extend a model's vocabulary to match an extended tokenizer and initialise the new rows.

The tokenizer must *extend* the model's own: every id the base tokenizer has keeps the same
string, new tokens come after. The embedding matrix and the LM head are resized with
transformers' `resize_token_embeddings` (tied weights stay tied, untied stay untied; only `fit`
and `distill` untie), then the new rows are written according to `init`:

- `mean`: a new token's row is the mean of the base rows of the pieces the *base*
  tokenizer makes of that token's bytes (input rows from the input embedding, output rows
  from the LM head, separately).
- `fit` (default): `mean` input rows, and new output rows fitted by softmax regression on the extended
  model's hidden states over a sample of the training corpus (see `langadapt.model.init`). A tied
  model is untied (its LM head becomes a copy of the embedding, then the new rows are fitted).
- `distill`: `fit`, with new input rows first distilled from the base model: trained so that the
  model reading the new tokens predicts the next token as the base model does reading the base
  tokenizer's pieces of the same text (see `langadapt.model.init`).
- `align` (Yamaguchi et al. 2024): a new token's rows (input, and output when untied; a tied model
  stays tied) are the frequency-weighted mean of the base rows of the base tokens that overlap its
  occurrences in a sample of the training corpus, both tokenizations read with character offsets
  (see `langadapt.model.init`); new tokens the sample never shows get their `mean` rows.
- `random`: rows drawn from N(0, initializer_range), as transformers does with `mean_resizing=False`.
- `hf-default`: transformers' default `mean_resizing=True` (a Gaussian with the old rows'
  mean and 1e-9 times their covariance, i.e. practically the mean of all rows).

Every method leaves the old rows untouched, so logits over the old vocabulary do not change
for text the base tokenizer would cut the same way. Rows added only to reach
`pad_to_multiple_of` (no token in the tokenizer) get the mean of all base rows, whatever `init` is.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from langadapt.corpus import CORPUS_HELP, ReadingOptions
from langadapt.errors import LangadaptError
from langadapt.model.init import (ALIGN_SAMPLE_TOKENS, DISTILL_LR, DISTILL_SAMPLE_TOKENS, FIT_L2, FIT_SAMPLE_TOKENS,
                                  align_counts, base_pieces, distill_input_rows, final_hidden_states,
                                  fit_output_rows, mean_rows, weighted_rows)
from langadapt.model.load import MODEL_HELP, load_model
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import OutputOptions, write_adaptation_json
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer

INIT_METHODS = ("fit", "distill", "align", "mean", "random", "hf-default")
MEAN_BASED = ("mean", "fit", "distill", "align")  # inits that start from the mean rows
FITTED = ("fit", "distill")  # inits that fit the output rows on a sample of the training corpus
NEEDS_CORPUS = ("fit", "distill", "align")  # inits that read a sample of the training corpus (--corpus)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


# ----------------------------------------------------------------------------- checks

def token_strings(tokenizer) -> list:
    """The string of every id of `tokenizer`, added tokens included (None for an unused id)."""
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def check_extends(base_tokenizer, new_tokenizer, name: str = "tokenizer") -> int:
    """Raise unless `new_tokenizer` keeps every base id with the same string; return the base size."""
    old, new = token_strings(base_tokenizer), token_strings(new_tokenizer)
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            raise LangadaptError(f"{name} does not extend the model's tokenizer: id {i} is {a!r} in the base "
                                 f"but {b!r} in {name} (an extended tokenizer must keep every base id and "
                                 "add new tokens after them)")
    if len(new) < len(old):
        raise LangadaptError(f"{name} has {len(new)} tokens, fewer than the model's {len(old)} (ids "
                             f"{len(new)}..{len(old) - 1} are missing); to shrink a model use `langadapt model prune` "
                             "with a pruned tokenizer")
    return len(old)


def check_resizable(model) -> tuple[torch.nn.Embedding, torch.nn.Module]:
    """Return (input embedding, LM head), raising a clear error when the model has no resizable pair."""
    arch = type(model).__name__
    try:
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
    except (NotImplementedError, AttributeError) as e:
        raise LangadaptError(f"{arch} does not expose its token embeddings, so its vocabulary cannot be "
                             f"resized ({e})") from e
    if not isinstance(emb, torch.nn.Embedding):
        raise LangadaptError(f"{arch}: input embeddings are {type(emb).__name__}, not a torch Embedding; "
                             "its vocabulary cannot be resized")
    if head is None or not isinstance(head, (torch.nn.Linear, torch.nn.Embedding)):
        raise LangadaptError(f"{arch} has no LM head (output embeddings); load it as a causal language model")
    if head.weight.shape[0] != emb.weight.shape[0]:
        raise LangadaptError(f"{arch}: input embeddings have {emb.weight.shape[0]} rows but the LM head has "
                             f"{head.weight.shape[0]}; cannot resize them together")
    return emb, head


def is_tied(model) -> bool:
    """True when the model's LM head shares its weight tensor with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def tokenizer_hash(path: str | Path) -> str | None:
    """sha256 over the tokenizer files present in a tokenizer directory (None if it is not a directory)."""
    path = Path(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- surgery

def extend_model(model, base_tokenizer, new_tokenizer, init: str = "mean",
                 pad_to_multiple_of: int | None = None, seed: int = 0, fit_text: str | None = None,
                 fit_tokens: int = FIT_SAMPLE_TOKENS, fit_l2: float = FIT_L2,
                 distill_tokens: int = DISTILL_SAMPLE_TOKENS, distill_lr: float = DISTILL_LR,
                 align_tokens: int = ALIGN_SAMPLE_TOKENS, progress: bool = True) -> dict:
    """Resize `model` in place for `new_tokenizer` and initialise the new rows; return a report.

    `fit`, `distill` and `align` need `fit_text` (training text, never held-out text): its first
    `fit_tokens` tokens under the new tokenizer are the regression sample, its first `distill_tokens`
    the distillation sample, its first `align_tokens` the alignment sample. The report holds old/new
    vocab sizes, tied, init, the number of new tokens, padding rows, for `mean`/`fit`/`distill`/`align`
    how many new tokens had no base pieces (they got the mean of all rows), for `fit` (and `distill`)
    the sample and its loss, for `distill` its KL, for `align` the sample and how many new tokens got
    aligned rows and how many fell back to their mean rows.
    """
    if init not in INIT_METHODS:
        raise LangadaptError(f"unknown init '{init}'; choose one of {', '.join(INIT_METHODS)}")
    if init in NEEDS_CORPUS and not fit_text:
        raise LangadaptError(f"init '{init}' needs a sample of the training corpus (--corpus)")
    emb, head = check_resizable(model)
    n_base = check_extends(base_tokenizer, new_tokenizer)
    n_tok = len(new_tokenizer)
    old_rows = emb.weight.shape[0]
    if n_base > old_rows:
        raise LangadaptError(f"the model's tokenizer has {n_base} tokens but its embedding only {old_rows} rows")
    tied = is_tied(model)

    # Base statistics, taken before resizing.
    old_in = emb.weight.detach().float().clone()
    old_out = old_in if tied else head.weight.detach().float().clone()
    old_bias = None if tied or getattr(head, "bias", None) is None else head.bias.detach().float().clone()

    # New tokens get ids n_base..n_tok-1; some may fall on rows the base model already had
    # unused (its embedding padded beyond its tokenizer); those rows are re-initialised too.
    new_ids = list(range(n_base, n_tok))
    groups = [base_pieces(base_tokenizer, new_tokenizer, i) for i in new_ids] if init in MEAN_BASED else []

    torch.manual_seed(seed)
    model.resize_token_embeddings(max(n_tok, old_rows), pad_to_multiple_of=pad_to_multiple_of,
                                  mean_resizing=(init == "hf-default"))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    new_rows = emb.weight.shape[0]
    if is_tied(model) != tied:
        raise LangadaptError("resizing changed whether the embeddings are tied; refusing to write a broken model")

    align = None
    with torch.no_grad():
        # Means over the base tokenizer's rows only: rows beyond it (if any) were never trained.
        in_mean, out_mean = old_in[:n_base].mean(0), old_out[:n_base].mean(0)
        padding = list(range(max(n_tok, old_rows), new_rows))
        if init in MEAN_BASED and new_ids:
            emb.weight[new_ids] = mean_rows(old_in, groups, in_mean).to(emb.weight.dtype)
            if not tied:
                head.weight[new_ids] = mean_rows(old_out, groups, out_mean).to(head.weight.dtype)
                if old_bias is not None:
                    head.bias[new_ids] = torch.tensor([old_bias[g].mean() if g else old_bias.mean()
                                                       for g in groups], dtype=head.bias.dtype)
            if init == "align":
                align = _align_new_rows(model, base_tokenizer, new_tokenizer, new_ids, fit_text, align_tokens,
                                        old_in, None if tied else old_out, old_bias)
        elif new_ids and new_ids[0] < old_rows:
            # resize_token_embeddings keeps existing rows, so unused base rows that now hold new
            # tokens must be drawn here the same way as the appended ones.
            reused = list(range(new_ids[0], min(n_tok, old_rows)))
            rows = _draw_rows(init, old_in[:n_base], len(reused), model.config)
            emb.weight[reused] = rows.to(emb.weight.dtype)
            if not tied:
                rows = _draw_rows(init, old_out[:n_base], len(reused), model.config)
                head.weight[reused] = rows.to(head.weight.dtype)
        if padding:
            emb.weight[padding] = in_mean.to(emb.weight.dtype)
            if not tied:
                head.weight[padding] = out_mean.to(head.weight.dtype)
                if old_bias is not None:
                    head.bias[padding] = old_bias.mean().to(head.bias.dtype)

    fit = distill = None
    if init in FITTED and new_ids:
        if tied:
            untie_output_embeddings(model)
        if init == "distill":
            rows, distill = distill_input_rows(model, base_tokenizer, new_tokenizer, new_ids, fit_text,
                                               max_tokens=distill_tokens, lr=distill_lr, seed=seed, progress=progress)
            with torch.no_grad():
                emb.weight[new_ids[0]:new_ids[-1] + 1] = rows.to(emb.weight.dtype)
        fit = _fit_new_output_rows(model, new_tokenizer, new_ids, fit_text, fit_tokens, fit_l2, progress)
    return {
        "init": init,
        "tied_embeddings": is_tied(model),
        "untied_by_init": tied and not is_tied(model),
        "old_vocab_size": old_rows,
        "base_tokenizer_size": n_base,
        "tokenizer_size": n_tok,
        "new_vocab_size": new_rows,
        "new_tokens": len(new_ids),
        "padding_rows": len(padding),
        "padding_init": "mean of all base rows" if padding else None,
        "pad_to_multiple_of": pad_to_multiple_of,
        "mean_init_without_base_pieces": sum(1 for g in groups if not g) if groups else None,
        "mean_init_pieces_per_token": round(sum(map(len, groups)) / len(groups), 3) if groups else None,
        "seed": seed,
        **({"align": align} if align else {}),
        **({"distill": distill} if distill else {}),
        **({"fit": fit} if fit else {}),
    }


def untie_output_embeddings(model) -> None:
    """Give a tied model an LM head of its own, a copy of the input embedding (logits unchanged),
    and mark the config untied so that it is saved and loaded as two matrices."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    head.weight = torch.nn.Parameter(emb.weight.detach().clone())
    model.config.get_text_config().tie_word_embeddings = False
    model.config.tie_word_embeddings = False
    if is_tied(model):
        raise LangadaptError(f"{type(model).__name__}: could not untie the LM head from the input embedding")


def _fit_new_output_rows(model, tokenizer, new_ids: list[int], text: str, max_tokens: int, l2: float,
                         progress: bool) -> dict:
    """Replace the LM head's rows `new_ids` by `fit_output_rows` on the hidden states of `text`."""
    start = time.perf_counter()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    hidden, targets = final_hidden_states(model, ids, tokenizer.bos_token_id, progress=progress)
    head = model.get_output_embeddings()
    first, last = new_ids[0], new_ids[-1] + 1
    old = torch.cat([head.weight[:first], head.weight[last:]]).detach()
    # Renumber so the new rows come last, as fit_output_rows expects (rows past the tokenizer stay old).
    order = torch.cat([torch.arange(first), torch.arange(last, head.weight.shape[0]), torch.arange(first, last)])
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    rows, figures = fit_output_rows(hidden, position[targets], old, head.weight[first:last].detach(), l2=l2,
                                    progress=progress)
    with torch.no_grad():
        head.weight[first:last] = rows.to(head.weight.dtype)
    return {"sample_tokens": len(ids), "new_token_share": round(sum(i >= first for i in ids) / max(len(ids), 1), 3),
            "l2": l2, **figures, "seconds": round(time.perf_counter() - start, 1)}


def _align_new_rows(model, base_tokenizer, new_tokenizer, new_ids: list[int], text: str, max_tokens: int,
                    old_in: torch.Tensor, old_out: torch.Tensor | None, old_bias: torch.Tensor | None) -> dict:
    """Overwrite the (mean) rows of the new tokens that occur in `text` with their aligned rows:
    the count-weighted mean of the base rows overlapping their occurrences (`align_counts`), input
    rows from `old_in`, output rows (and bias) from `old_out` unless the model is tied (None)."""
    start = time.perf_counter()
    first, last = new_ids[0], new_ids[-1] + 1
    counts, figures = align_counts(base_tokenizer, new_tokenizer, text, first, last, max_tokens=max_tokens)
    aligned = [i for i in new_ids if i in counts]
    if aligned:
        rows = [counts[i] for i in aligned]
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        emb.weight[aligned] = weighted_rows(old_in, rows, emb.weight[aligned]).to(emb.weight.dtype)
        if old_out is not None:
            head.weight[aligned] = weighted_rows(old_out, rows, head.weight[aligned]).to(head.weight.dtype)
            if old_bias is not None:
                head.bias[aligned] = weighted_rows(old_bias[:, None], rows,
                                                   head.bias[aligned][:, None])[:, 0].to(head.bias.dtype)
    pieces = sum(sum(counts[i].values()) for i in aligned)
    return {**figures, "aligned_tokens": len(aligned), "mean_fallback_tokens": len(new_ids) - len(aligned),
            "base_pieces_per_occurrence": round(pieces / max(figures["new_token_occurrences"], 1), 3),
            "seconds": round(time.perf_counter() - start, 1)}


def _draw_rows(init: str, old: torch.Tensor, n: int, config) -> torch.Tensor:
    """`n` rows drawn the way transformers' resize draws appended rows for `random` / `hf-default`."""
    if init == "random":
        return torch.randn(n, old.shape[1]) * getattr(config, "initializer_range", 0.02)
    # hf-default samples from N(mean, 1e-9 * covariance): the mean of the old rows, to ~1e-5.
    return old.mean(0).expand(n, -1).clone()


# ----------------------------------------------------------------------------- command

@dataclass
class ModelExtendOptions(Options):
    """Check that TOKENIZER extends the base model's own tokenizer (same strings at the same ids), resize the
    input embeddings and the LM head (tied or untied as they were; --init fit/distill untie), initialise the new rows
    and write a standard model directory with the tokenizer and adaptation.json. Logits over the old vocabulary
    are unchanged."""

    base: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    tokenizer: str = option(None, metavar="DIR", required=True,
                            help="the extended tokenizer (e.g. from `tokenizer merge`)")
    init: str = option("fit", choices=INIT_METHODS,
                       help="new rows: 'mean' of the base rows of the pieces the base tokenizer makes of each new "
                            "token; 'fit' = 'mean' input rows and new output rows fitted by softmax regression on "
                            "the model's hidden states over --corpus (needs it; unties tied embeddings; one forward "
                            "pass over the sample plus L-BFGS: ~100 s for 2,800 rows of SmolLM2 on 2 cores, and "
                            "0.3-0.6 bits/char better than 'mean' on Korean before training, see docs/benchmarks.md); "
                            "'distill' = 'fit' after new input rows are trained (model frozen) to make the model "
                            "predict the next token as the base does on the base tokenizer's pieces of the same text "
                            "(needs --corpus; a forward pass over the sample cut both ways and a backward pass per "
                            "step: 345 s instead of 99 s for the demo's 24k-token corpus on 2 cores; after training "
                            "0.05-0.20 bits/char better than 'fit' on held-out Korean of the corpus' kind, no gain "
                            "on other Korean text); 'align' (Yamaguchi et al. 2024, 'How Can We Effectively Expand "
                            "the Vocabulary of LLMs with 0.01GB of Target Language Text?', arXiv:2406.11477) = "
                            "each new token's input and output rows are the mean of the base rows of the base "
                            "tokens that overlap its occurrences in --corpus (cut by both tokenizers, character "
                            "offsets), "
                            "weighted by how often each overlaps; tokens the sample never shows get 'mean' rows; "
                            "nothing fitted, a tied model stays tied (needs --corpus; seconds); "
                            "'random' N(0, initializer_range); "
                            "'hf-default' transformers' mean_resizing")
    corpus: list[str] = option([], metavar="PATH", help="training text for --init fit/distill/align (never held-out "
                                                        "text); "
                                                        + CORPUS_HELP)
    reading: ReadingOptions = embed(ReadingOptions)
    fit_tokens: int = option(FIT_SAMPLE_TOKENS, metavar="N",
                             help="--init fit/distill: the first N tokens of --corpus are the sample of the output "
                                  "rows' fit (more is better: 16k tokens gave 0.5 bits/char less gain)")
    fit_l2: float = option(FIT_L2, help="--init fit/distill: pull of the fitted rows towards their mean rows (1e-3 "
                                        "over-fits the sample; chosen on a split of the training corpus)")
    distill_tokens: int = option(DISTILL_SAMPLE_TOKENS, metavar="N",
                                 help="--init distill: the first N tokens of --corpus are the distillation sample "
                                      "(one pass; the cost grows with N)")
    distill_lr: float = option(DISTILL_LR, help="--init distill: Adam learning rate of the new input rows, relative to "
                                                "the RMS entry of the base embedding (0.022 = 3e-3 for SmolLM2)")
    align_tokens: int = option(ALIGN_SAMPLE_TOKENS, metavar="N",
                               help="--init align: the first N tokens of --corpus (under the new tokenizer) are the "
                                    "sample whose overlaps give the aligned rows (it only tokenizes both ways: 22k "
                                    "tokens took 2-10 s on 2 busy cores)")
    pad_to_multiple_of: int | None = option(None, metavar="N", help="pad the vocabulary to a multiple of N rows "
                                                                    "(padding rows get the mean of all base rows)")
    seed: int = option(0, help="seed for the random inits")
    output: OutputOptions = embed(OutputOptions)

    def __post_init__(self):
        super().__post_init__()
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise OptionError("pad_to_multiple_of", f"must be a positive integer, got {self.pad_to_multiple_of}")
        if self.init in NEEDS_CORPUS and not self.corpus:
            default = " (the default)" if self.init == "fit" else ""
            raise OptionError("corpus", f"--init {self.init}{default} needs training text (--corpus TRAIN_TEXT); "
                                        "or choose --init mean")
        if self.fit_tokens < 2:
            raise OptionError("fit_tokens", f"must be at least 2, got {self.fit_tokens}")
        if self.align_tokens < 1:
            raise OptionError("align_tokens", f"must be at least 1, got {self.align_tokens}")
        if self.distill_tokens < 2:
            raise OptionError("distill_tokens", f"must be at least 2, got {self.distill_tokens}")
        if not self.distill_lr > 0:
            raise OptionError("distill_lr", f"must be positive, got {self.distill_lr}")


def model_extend_command(opts: ModelExtendOptions) -> int:
    """Write the base model resized and initialised for an extended tokenizer."""
    start = time.perf_counter()
    opts.output.check_free()
    base_source = resolve_model_source(opts.base)
    base_tokenizer = load_tokenizer(str(base_source))
    new_tokenizer = load_tokenizer(opts.tokenizer)
    # Check the tokenizer before loading the (larger) model, so a wrong pairing fails fast.
    check_extends(base_tokenizer, new_tokenizer, name=str(opts.tokenizer))
    model = load_model(str(base_source))
    params_before = sum(p.numel() for p in model.parameters())
    # tokens average under 4 characters in every script, so 4 x fit_tokens characters are plenty
    sample_tokens = {"distill": max(opts.fit_tokens, opts.distill_tokens), "align": opts.align_tokens}.get(
        opts.init, opts.fit_tokens)
    fit_text = (opts.reading.read_text(opts.corpus, max_chars=4 * sample_tokens)
                if opts.init in NEEDS_CORPUS else None)
    report = extend_model(model, base_tokenizer, new_tokenizer, init=opts.init,
                          pad_to_multiple_of=opts.pad_to_multiple_of, seed=opts.seed, fit_text=fit_text,
                          fit_tokens=opts.fit_tokens, fit_l2=opts.fit_l2, distill_tokens=opts.distill_tokens,
                          distill_lr=opts.distill_lr, align_tokens=opts.align_tokens)
    params_after = sum(p.numel() for p in model.parameters())

    with opts.output.directory() as tmp:
        model.save_pretrained(tmp)
        new_tokenizer.save_pretrained(tmp)
        record = write_adaptation_json(  # the tokenizer's own history continues in the chain
            tmp, "model-extend", inherit_from=opts.tokenizer, base=str(opts.base), base_source=str(base_source),
            tokenizer=str(opts.tokenizer), corpus=list(opts.corpus) or None, tokenizer_sha256=tokenizer_hash(opts.tokenizer),
            parameters_before=params_before, parameters_after=params_after,
            seconds=round(time.perf_counter() - start, 1), **report)
    summary = {k: record[k] for k in ("init", "tied_embeddings", "old_vocab_size", "new_vocab_size", "new_tokens",
                                      "padding_rows", "parameters_before", "parameters_after", "seconds")}
    print(json.dumps({"out": str(opts.output.out), **summary}, indent=2))
    return 0

