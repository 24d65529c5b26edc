"""BPE-dropout (Provilkov et al., 2020) with a seeded generator: training text cut into the
shorter pieces that text the tokenizer has not seen breaks into.

A tokenizer extended on a small corpus cuts that corpus into its longest pieces, but cuts a new
document's unseen words into short ones (single syllables, byte pieces) that training then rarely
shows the model. BPE-dropout skips each applicable merge with probability `dropout` at every step,
so the same training text also comes in those shorter cuts. The `tokenizers` library has this
(`BPE(dropout=...)`), but its random numbers cannot be seeded, so two runs would train on
different blocks; `DropoutSegmenter` is the same algorithm (a heap of applicable merges, lowest
rank first; a dropped merge waits until another is applied) driven by a `random.Random` the
caller seeds. With `dropout=0` it gives exactly the ids of `tokenizer(text,
add_special_tokens=False)` (tested).
"""

from __future__ import annotations

import heapq
import json
import random
import re
from typing import Callable

from langadapt.errors import LangadaptError
from langadapt.tokenizer.merge_bpe import merge_pairs


def bpe_with_dropout(symbols: list[str], ranks: dict[tuple[str, str], int], dropout: float,
                     rng: random.Random) -> list[str]:
    """Merge adjacent `symbols` by BPE: the applicable merge of lowest rank (leftmost on ties)
    first, each popped merge dropped with probability `dropout`; stop when none is left."""
    symbols = list(symbols)
    following = list(range(1, len(symbols))) + [-1]
    preceding = list(range(-1, len(symbols) - 1))
    heap = [(ranks[pair], i, *pair) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
    heapq.heapify(heap)
    dropped = []
    while heap:
        entry = heapq.heappop(heap)
        if dropout and rng.random() < dropout:
            dropped.append(entry)
            continue
        for waiting in dropped:
            heapq.heappush(heap, waiting)
        dropped.clear()
        _, i, left, right = entry
        j = following[i]
        if j == -1 or symbols[i] != left or symbols[j] != right:
            continue  # stale: one side was merged since this entry was pushed
        symbols[i], symbols[j] = left + right, None
        following[i] = following[j]
        if following[i] != -1:
            preceding[following[i]] = i
        for a, b in ((preceding[i], i), (i, following[i])):
            if a != -1 and b != -1 and (symbols[a], symbols[b]) in ranks:
                heapq.heappush(heap, (ranks[(symbols[a], symbols[b])], a, symbols[a], symbols[b]))
    return [s for s in symbols if s is not None]


class DropoutSegmenter:
    """Texts -> token ids, as the tokenizer cuts them (no special tokens added) but with BPE-dropout.

    Reads the tokenizer's BPE model (vocabulary, merges, byte fallback) and uses its own
    normalizer and pre-tokenizer; added tokens written in the text become their ids. For BPE
    tokenizers only (byte-level ones like GPT-2, SmolLM2, Llama-3; Llama-2-style with byte
    fallback), without a continuing-subword prefix or end-of-word suffix.
    """

    def __init__(self, tokenizer, dropout: float):
        backend = tokenizer.backend_tokenizer
        model = json.loads(backend.to_str())["model"]
        if model.get("type") != "BPE" or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise LangadaptError(f"bpe_dropout needs a BPE tokenizer without subword prefixes or suffixes; this one "
                                 f"is {model.get('type')}")
        self.vocab: dict[str, int] = model["vocab"]
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merge_pairs(model["merges"])):
            self.ranks.setdefault(pair, rank)
        self.byte_fallback, self.ignore_merges = bool(model.get("byte_fallback")), bool(model.get("ignore_merges"))
        self.unk = self.vocab.get(model.get("unk_token") or "")
        self.normalizer, self.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        self.added = added = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
        self.added_pattern = (re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True))))
                              if added else None)
        self.dropout = dropout

    def seeded(self, seed: int | str) -> Callable[[list[str]], list[list[int]]]:
        """texts -> token ids, drawing from one generator seeded with `seed` (the same texts in the
        same order, the same ids)."""
        rng = random.Random(seed)
        return lambda texts: [self.encode(t, rng) for t in texts]

    def encode(self, text: str, rng: random.Random) -> list[int]:
        """Token ids of one text."""
        ids: list[int] = []
        start = 0
        for match in self.added_pattern.finditer(text) if self.added_pattern else ():
            ids += self._encode_plain(text[start:match.start()], rng)
            ids.append(self.added[match.group()])
            start = match.end()
        return ids + self._encode_plain(text[start:], rng)

    def _encode_plain(self, text: str, rng: random.Random) -> list[int]:
        if not text:
            return []
        if self.normalizer is not None:
            text = self.normalizer.normalize_str(text)
        words = [w for w, _ in self.pre_tokenizer.pre_tokenize_str(text)] if self.pre_tokenizer else [text]
        ids: list[int] = []
        for word in words:
            if self.ignore_merges and word in self.vocab:
                ids.append(self.vocab[word])
                continue
            for piece in bpe_with_dropout(list(word), self.ranks, self.dropout, rng):
                ids += self._piece_ids(piece)
        return ids

    def _piece_ids(self, piece: str) -> list[int]:
        if piece in self.vocab:
            return [self.vocab[piece]]
        byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in piece.encode("utf-8")] if self.byte_fallback else [None]
        if None not in byte_ids:
            return byte_ids
        return [self.unk] if self.unk is not None else []  # as `tokenizers` does when a byte token is missing
