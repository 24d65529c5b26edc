"""Vocabulary pruning: keep only the tokens a corpus of the kept languages needs.

The idea of LLMPruner (Firefly's vocabulary pruner, which cut Bloom's 250k vocabulary down to
its Chinese and English tokens), for any transformers fast tokenizer with a BPE or Unigram model.

What is kept, in old-id order (new ids are 0, 1, 2, ... in that order):
- added/special tokens (`<s>`, `<|im_start|>`, ...) and the model's unknown token;
- byte tokens: the 256 byte-level symbols of a byte-level BPE, or the `<0xNN>` pieces of a
  SentencePiece-style byte-fallback model, so any text can still be encoded;
- every token the corpus uses at least `min_count` times (counted with the fast tokenizer);
- BPE only: the intermediate tokens BPE builds on the way to each kept token ("merge closure").

Why the closure makes pruning exact: BPE merges inside one final token never cross its
boundaries, so the merges that build a token `t` in any text are the ones BPE applies to
the string of `t` alone. Keeping every symbol of that run (and every merge whose two inputs
and result are kept, in the old order) means that, on any text whose original tokens are all
kept, the pruned tokenizer picks exactly the same merges: same token strings, ids renumbered.
Text that needed a dropped token (min_count > 1, or new text) is split into smaller kept
tokens and, at worst, bytes, so it still round-trips through decode for byte-level and
byte-fallback tokenizers. A Unigram model without byte fallback maps characters it no longer
has to the unknown token instead (decode then gives `<unk>`/"⁇" there, not the text).

`id_map.json` (written next to the tokenizer) is what model pruning needs to slice embeddings:
    {"old_vocab_size": 32000, "new_vocab_size": 1021,
     "old_to_new": {"0": 0, "1": 1, ...},     # kept old ids only (JSON keys are strings)
     "new_to_old": [0, 1, 2, 3, ...]}         # new id i came from old id new_to_old[i]
so `new_embeddings = old_embeddings[new_to_old]`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers
from tqdm import tqdm

from langadapt.corpus import CORPUS_HELP, ReadingOptions, ReadStats
from langadapt.errors import LangadaptError
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import OutputOptions, write_adaptation_json, write_json_atomic
from langadapt.tokenizer.load import load_tokenizer, tokenizer_kind
from langadapt.tokenizer.merge_bpe import merge_pairs

BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

# Files `save_pretrained` may write that would describe the old vocabulary.
_STALE_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


# ----------------------------------------------------------------------------- counting

def iter_batches(texts: Iterable[str], max_records: int = 1000, max_chars: int = 1_000_000) -> Iterator[list[str]]:
    """Group a stream of texts into lists of at most `max_records` texts or about `max_chars` characters."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= max_records or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def id_space_size(tok) -> int:
    """One more than the largest id the tokenizer can produce (model vocabulary and added tokens)."""
    return max(max(tok.get_vocab().values()) + 1, len(tok))


def count_token_ids(tok, texts: Iterable[str], desc: str = "counting tokens", progress: bool = True) -> np.ndarray:
    """How often each token id occurs when the fast tokenizer encodes `texts` (no special tokens added).

    Streams: texts are encoded in batches by the Rust tokenizer, only the counts are kept.
    """
    counts = np.zeros(id_space_size(tok), dtype=np.int64)
    backend = tok.backend_tokenizer
    with tqdm(desc=desc, unit=" chars", unit_scale=True, disable=not progress) as bar:
        for batch in iter_batches(texts):
            encodings = backend.encode_batch_fast(batch, add_special_tokens=False)
            ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
            counts += np.bincount(ids, minlength=len(counts))
            bar.update(sum(len(t) for t in batch))
    return counts


# ----------------------------------------------------------------------------- the algorithm

def bpe_symbols(token: str, ranks: dict[tuple[str, str], int]) -> set[str]:
    """Every symbol BPE creates when it encodes the string `token` on its own (the token included).

    Plain BPE: start from the characters, repeatedly merge the adjacent pair of lowest rank
    (leftmost first on ties), as the `tokenizers` BPE model does.
    """
    symbols = list(token)
    seen = set(symbols)
    while len(symbols) > 1:
        best = None
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        seen.add(symbols[i])
    return seen


@dataclass
class PruneResult:
    """A pruned backend tokenizer state and how it relates to the original."""

    state: dict  # the new `tokenizer.json` content
    new_to_old: list[int]  # new id i came from old id new_to_old[i]
    old_vocab_size: int
    kept: dict[str, int]  # kept tokens by category
    dropped: dict[str, int]  # dropped tokens by reason

    @property
    def old_to_new(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.new_to_old)}


def prune_state(state: dict, counts: np.ndarray, min_count: int = 1, byte_level: bool = False) -> PruneResult:
    """Prune a `tokenizer.json` state (a dict) to the tokens whose corpus count is >= `min_count`.

    `counts[i]` is how often id i occurs in the corpus; `byte_level` says the model is a
    byte-level BPE (its 256 byte symbols are kept). Pure function: returns a new state.
    """
    if min_count < 1:
        raise LangadaptError(f"--min-count must be at least 1, got {min_count}")
    model = state["model"]
    mtype = model.get("type")
    if mtype == "BPE":
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise LangadaptError("BPE tokenizers with a continuing_subword_prefix or end_of_word_suffix "
                                 "are not supported by prune (expected GPT-2/Llama-style BPE)")
        id_to_token = {i: t for t, i in model["vocab"].items()}
    elif mtype == "Unigram":
        id_to_token = {i: piece for i, (piece, _score) in enumerate(model["vocab"])}
    else:
        raise LangadaptError(f"prune supports BPE and Unigram tokenizer models, not {mtype!r}")
    added = {a["id"]: a["content"] for a in state.get("added_tokens", [])}
    all_ids = sorted(set(id_to_token) | set(added))
    old_vocab_size = all_ids[-1] + 1
    if len(counts) < old_vocab_size:
        counts = np.concatenate([counts, np.zeros(old_vocab_size - len(counts), dtype=counts.dtype)])

    category: dict[int, str] = {}
    for i in added:
        category[i] = "special"
    unk = model.get("unk_token") if mtype == "BPE" else (
        id_to_token.get(model["unk_id"]) if model.get("unk_id") is not None else None)
    byte_symbols = set(pre_tokenizers.ByteLevel.alphabet()) if byte_level else set()
    for i, t in id_to_token.items():
        if i in category:
            continue
        if t == unk:
            category[i] = "unk"
        elif BYTE_PIECE.match(t) or t in byte_symbols:
            category[i] = "byte"
        elif counts[i] >= min_count:
            category[i] = "used"

    merges_out = None
    if mtype == "BPE":
        merges = merge_pairs(model["merges"])
        ranks = {pair: r for r, pair in enumerate(merges)}
        token_to_id = model["vocab"]
        for i in [i for i, c in category.items() if c == "used" and i in id_to_token]:
            for sym in bpe_symbols(id_to_token[i], ranks):
                j = token_to_id.get(sym)
                if j is not None and j not in category:
                    category[j] = "merge_closure"
        kept_tokens = {id_to_token[i] for i in category if i in id_to_token}
        merges_out = [[a, b] for a, b in merges if a in kept_tokens and b in kept_tokens and a + b in kept_tokens]

    new_to_old = sorted(category)
    old_to_new = {old: new for new, old in enumerate(new_to_old)}

    new_state = json.loads(json.dumps(state))  # deep copy
    new_model = new_state["model"]
    if mtype == "BPE":
        new_model["vocab"] = {id_to_token[i]: old_to_new[i] for i in new_to_old if i in id_to_token}
        new_model["merges"] = merges_out
    else:
        new_model["vocab"] = [model["vocab"][i] for i in new_to_old if i in id_to_token]
        if model.get("unk_id") is not None:
            new_model["unk_id"] = old_to_new[model["unk_id"]]
    for a in new_state.get("added_tokens", []):
        a["id"] = old_to_new[a["id"]]
    _remap_ids(new_state.get("post_processor"), old_to_new)
    if new_state.get("padding") and "pad_id" in new_state["padding"]:
        new_state["padding"]["pad_id"] = old_to_new.get(new_state["padding"]["pad_id"], 0)

    kept = {c: 0 for c in ("special", "unk", "byte", "used", "merge_closure")}
    for c in category.values():
        kept[c] += 1
    dropped = {"unused": 0, "below_min_count": 0}
    for i in all_ids:
        if i not in category:
            dropped["unused" if counts[i] == 0 else "below_min_count"] += 1
    return PruneResult(new_state, new_to_old, old_vocab_size, kept, dropped)


def _remap_ids(node, old_to_new: dict[int, int]) -> None:
    """Renumber the special-token ids a post-processor holds (TemplateProcessing, Bert/Roberta, Sequence)."""
    if isinstance(node, list):
        for x in node:
            _remap_ids(x, old_to_new)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "TemplateProcessing":
        for spec in node.get("special_tokens", {}).values():
            spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(node.get(key), list) and len(node[key]) == 2:
            node[key][1] = old_to_new[node[key][1]]
    _remap_ids(node.get("processors"), old_to_new)  # Sequence


# ----------------------------------------------------------------------------- writing

def save_pruned_tokenizer(tok, result: PruneResult, out_dir: Path) -> None:
    """Write `tok`'s files into `out_dir` with the pruned `tokenizer.json` (special tokens, chat template kept)."""
    tok.save_pretrained(str(out_dir))
    for name in _STALE_FILES:
        (out_dir / name).unlink(missing_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(result.state, ensure_ascii=False), encoding="utf-8")
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # A model-specific class may rebuild its vocabulary from files we removed; the generic one reads tokenizer.json.
    config["tokenizer_class"] = "TokenizersBackend"
    if "added_tokens_decoder" in config:
        old_to_new = result.old_to_new
        config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in config["added_tokens_decoder"].items()}
    config.pop("vocab_file", None)
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def check_saved(out_dir: Path, pruned_backend, samples: list[str]) -> None:
    """Reload the written directory with AutoTokenizer and check it tokenises like the pruned backend."""
    from transformers import AutoTokenizer  # imports torch: only when a tokenizer is written

    reloaded = AutoTokenizer.from_pretrained(str(out_dir))
    for text in samples:
        want = pruned_backend.encode(text, add_special_tokens=True).ids
        got = reloaded(text)["input_ids"]
        if got != want:
            raise LangadaptError(f"internal error: the written tokenizer in {out_dir} does not reload as pruned "
                                 f"({got[:10]} != {want[:10]} on {text[:40]!r})")


# ----------------------------------------------------------------------------- command

@dataclass
class TokenizerPruneOptions(Options):
    """Keep only the tokens a corpus of the kept languages needs (LLMPruner for any fast BPE/Unigram).

    Count the base tokenizer's tokens on the corpus (streamed, in batches) and keep: special/added tokens,
    <unk>, byte tokens (the 256 byte-level symbols or SentencePiece <0xNN> pieces), every token used at least
    --min-count times and, for BPE, the intermediate tokens its merges need. New ids follow the old order.
    The corpus tokenises to the same token strings as before; other text falls back to smaller pieces and
    bytes (and still decodes back, except for Unigram models without byte fallback: <unk>). Writes an HF
    tokenizer dir with id_map.json ({old_vocab_size, new_vocab_size, old_to_new: {old: new}, new_to_old:
    [old ids]}, for `model prune`), prune_report.json and adaptation.json."""

    base: str = option(None, metavar="TOKENIZER", required=True,
                       help="base tokenizer: HF dir, tokenizer.model, .gguf, alias or hub id")
    corpus: list[str] = option([], metavar="PATH", required=True, help=CORPUS_HELP)
    reading: ReadingOptions = embed(ReadingOptions)
    output: OutputOptions = embed(OutputOptions)
    min_count: int = option(1, metavar="K", help="keep tokens used at least K times")

    def __post_init__(self):
        super().__post_init__()
        self.reading.require_lang()
        if self.min_count < 1:
            raise OptionError("min_count", f"must be at least 1, got {self.min_count}")


def tokenizer_prune_command(opts: TokenizerPruneOptions) -> int:
    """Keep the tokens a corpus needs; write tokenizer, id map and report."""
    opts.output.check_free()
    tok = load_tokenizer(opts.base)
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise LangadaptError(f"{opts.base}: prune needs a fast (tokenizers-backed) tokenizer")
    state = json.loads(tok.backend_tokenizer.to_str())
    kind = tokenizer_kind(tok)
    if state["model"].get("type") not in ("BPE", "Unigram"):
        raise LangadaptError(f"{opts.base}: prune supports BPE and Unigram tokenizers, "
                             f"this one is {state['model'].get('type')!r}")

    stats = ReadStats()
    texts = opts.reading.iter_texts(opts.corpus, stats=stats)
    samples: list[str] = []

    def keep_samples(stream):
        for t in stream:
            if len(samples) < 200:
                samples.append(t)
            yield t

    start = time.perf_counter()
    counts = count_token_ids(tok, keep_samples(texts))
    seconds = time.perf_counter() - start
    lang = opts.reading.profile().code
    result = prune_state(state, counts, min_count=opts.min_count, byte_level=kind == "byte-level-bpe")
    pruned_backend = Tokenizer.from_str(json.dumps(result.state))
    id_map = {"old_vocab_size": result.old_vocab_size, "new_vocab_size": len(result.new_to_old),
              "old_to_new": {str(o): n for n, o in enumerate(result.new_to_old)}, "new_to_old": result.new_to_old}
    report = {
        "base": str(opts.base), "tokenizer_kind": kind, "model_type": state["model"]["type"],
        "corpus": {"paths": list(opts.corpus), "files": stats.files, "records": stats.records,
                   "tokens": int(counts.sum()), "lang": lang},
        "min_count": opts.min_count,
        "old_vocab_size": result.old_vocab_size, "new_vocab_size": len(result.new_to_old),
        "kept": result.kept, "dropped": result.dropped,
        "merges": ({"old": len(state["model"]["merges"]), "new": len(result.state["model"]["merges"])}
                   if state["model"]["type"] == "BPE" else None),
        "counting_seconds": round(seconds, 2),
    }
    with opts.output.directory() as tmp:
        save_pruned_tokenizer(tok, result, tmp)
        check_saved(tmp, pruned_backend, samples[:50])
        write_json_atomic(tmp / "id_map.json", id_map)
        write_json_atomic(tmp / "prune_report.json", report)
        write_adaptation_json(tmp, "tokenizer.prune", inherit_from=opts.base, base=str(opts.base), tokenizer_kind=kind,
                              corpus=list(opts.corpus), lang=lang, min_count=opts.min_count,
                              old_vocab_size=result.old_vocab_size, new_vocab_size=len(result.new_to_old),
                              id_map="id_map.json")
    kept = ", ".join(f"{k} {v}" for k, v in result.kept.items())
    dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items())
    print(f"pruned {opts.base}: {result.old_vocab_size} -> {len(result.new_to_old)} tokens "
          f"(kept: {kept}; dropped: {dropped}); {stats.records} records, {int(counts.sum())} tokens counted "
          f"in {seconds:.1f} s; wrote {opts.output.out}")
    return 0
