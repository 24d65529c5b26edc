"""Decoding pieces every generator shares (`chat`, `serve`, the web UI, `eval generate`).

- **No broken characters.** Byte-level BPE and SentencePiece byte-fallback vocabularies hold
  tokens that are single bytes, so a model can emit bytes that never form UTF-8 (U+FFFD on
  screen). `Utf8Table` precomputes, once per tokenizer, which tokens may follow each of the 8
  states of a UTF-8 decoder ("no character open", or "k bytes still expected and the next one
  must lie in [lo, hi]") and the state each token leaves; `Utf8Mask` is the transformers
  `LogitsProcessor` that applies it at every step with one table lookup per row. Special tokens
  (EOS, end of turn) are allowed only when no character is open.
- **Incremental text.** `TextStream` turns token ids into text with `tokenizers`' `DecodeStream`
  (one character at a time, also for scripts without spaces such as Tibetan) and `finish()`
  returns whatever `tokenizer.decode` of all ids has beyond what was streamed, so the streamed
  text equals the decoded text exactly.
- **Stop strings** (`StopStrings`) are matched on text, holding back any tail that could be the
  start of a stop string.
- `Sampling` (how to pick tokens) and `Generation` (what came out). The decoding itself is
  `model.batch` (one sequence or many together).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tokenizers.decoders import DecodeStream
from transformers import LogitsProcessor
from transformers.convert_slow_tokenizer import bytes_to_unicode

from langadapt.tokenizer.load import tokenizer_kind

# ----------------------------------------------------------------------------- UTF-8 validity

# A UTF-8 decoder state: (bytes still expected, lowest and highest allowed value of the next byte).
# The ranges are those of the Unicode standard's table of well-formed byte sequences (no overlong
# forms, no surrogates, nothing above U+10FFFF).
CLOSED = (0, 0, 0)
STATES = [CLOSED, (1, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0xBF), (2, 0x80, 0x9F),
          (3, 0x90, 0xBF), (3, 0x80, 0xBF), (3, 0x80, 0x8F)]
STATE_INDEX = {s: i for i, s in enumerate(STATES)}


def _after_lead_byte(byte: int) -> tuple[int, int, int] | None:
    """The state after the first byte of a character, or None when no character starts with it."""
    if byte < 0x80:
        return CLOSED
    if 0xC2 <= byte <= 0xDF:
        return (1, 0x80, 0xBF)
    if byte == 0xE0:
        return (2, 0xA0, 0xBF)
    if 0xE1 <= byte <= 0xEF:
        return (2, 0x80, 0x9F) if byte == 0xED else (2, 0x80, 0xBF)
    if byte == 0xF0:
        return (3, 0x90, 0xBF)
    if 0xF1 <= byte <= 0xF3:
        return (3, 0x80, 0xBF)
    if byte == 0xF4:
        return (3, 0x80, 0x8F)
    return None  # 0x80-0xC1 (a continuation byte or an overlong lead), 0xF5-0xFF


def utf8_after(state: tuple[int, int, int], data: bytes) -> tuple[int, int, int] | None:
    """The decoder state after `data` starting from `state`, or None when `data` breaks UTF-8 there."""
    for byte in data:
        remaining, lo, hi = state
        if remaining == 0:
            state = _after_lead_byte(byte)
            if state is None:
                return None
        elif not lo <= byte <= hi:
            return None
        else:
            state = (remaining - 1, 0x80, 0xBF) if remaining > 1 else CLOSED
    return state


_SPM_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id adds to the text, by id (None for special tokens).

    Byte-level BPE tokens map each character back through the GPT-2 byte alphabet; SentencePiece
    pieces are their text with "▁" as a space, and byte-fallback pieces `<0xAB>` are that byte;
    tokens added as whole strings (and any other tokenizer's tokens) are their text in UTF-8."""
    kind = tokenizer_kind(tokenizer)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    byte_of_char = {c: b for b, c in bytes_to_unicode().items()}
    out: list[bytes | None] = []
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special:
            out.append(None)
        elif i in added or token is None:
            out.append(added.get(i, "").encode("utf-8"))
        elif kind == "byte-level-bpe" and all(c in byte_of_char for c in token):
            out.append(bytes(byte_of_char[c] for c in token))
        elif kind == "sentencepiece" and (m := _SPM_BYTE.match(token)):
            out.append(bytes([int(m.group(1), 16)]))
        elif kind == "sentencepiece":
            out.append(token.replace("▁", " ").encode("utf-8"))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


class Utf8Table:
    """For each UTF-8 decoder state (`STATES`) and token id: may the token come next, and which state follows.

    `allowed[s]` is a bool tensor over the vocabulary (`width` ids: the model's rows, which may be
    more than the tokenizer's; extra ids are never allowed), `next_state[s, id]` the index of the
    state after the token (0 where it is not allowed)."""

    def __init__(self, tokenizer, width: int | None = None):
        pieces = token_bytes(tokenizer)
        width = max(width or 0, len(pieces))
        allowed = [[False] * width for _ in STATES]
        next_state = [[0] * width for _ in STATES]
        for token_id, data in enumerate(pieces):
            if data is None or max(data, default=0x80) < 0x80:  # special or ASCII: only between characters
                allowed[0][token_id] = True
            elif not data:  # an empty token changes nothing
                for s in range(len(STATES)):
                    allowed[s][token_id], next_state[s][token_id] = True, s
            else:
                for s, state in enumerate(STATES):
                    after = utf8_after(state, data)
                    if after is not None:
                        allowed[s][token_id], next_state[s][token_id] = True, STATE_INDEX[after]
        self.allowed = torch.tensor(allowed, dtype=torch.bool)
        self.next_state = torch.tensor(next_state, dtype=torch.long)
        self.width = width

    def allowed_after(self, states: torch.Tensor, width: int, device=None) -> torch.Tensor:
        """The tokens allowed in each row (bool, [rows, width]) given each row's state index; a row with
        nothing allowed (it cannot happen with a real vocabulary) allows everything."""
        allowed = self.allowed[states]
        if allowed.shape[1] < width:
            allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
        allowed = allowed[:, :width].to(device)
        return allowed | ~allowed.any(dim=1, keepdim=True)

    def state_after(self, state: int, token_id: int) -> int:
        """The state index after `token_id` from state index `state` (0 when it was not allowed)."""
        return int(self.next_state[state, token_id]) if token_id < self.width else 0


class Utf8Mask(LogitsProcessor):
    """Allows only tokens whose bytes continue a valid UTF-8 sequence (special tokens only when no
    character is open). One instance per `generate` call: it follows each row's state from the
    tokens generated after the prompt (a prompt made from text ends between characters)."""

    def __init__(self, table: Utf8Table):
        self.table = table
        self.states: torch.Tensor | None = None
        self.seen = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.states is None:
            self.states = torch.zeros(input_ids.shape[0], dtype=torch.long)
        else:
            for column in input_ids[:, self.seen:].T.cpu():
                column = column.clamp(max=self.table.width - 1)
                self.states = self.table.next_state[self.states, column]
        self.seen = input_ids.shape[1]
        return scores.masked_fill(~self.table.allowed_after(self.states, scores.shape[-1], scores.device), float("-inf"))


# ----------------------------------------------------------------------------- text out

class TextStream:
    """Token ids in, text out, a character at a time (`tokenizers.decoders.DecodeStream`).

    `push(id)` returns the new text ("" while a character is incomplete); `finish()` returns the
    rest, so that the pieces joined equal `tokenizer.decode(ids, skip_special_tokens=True)` of the
    ids up to the last complete character (a generation cut by the token limit in the middle of
    a character drops that character's bytes)."""

    def __init__(self, tokenizer, table: Utf8Table):
        self.tokenizer, self.table = tokenizer, table
        self.decoder = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.complete = 0  # ids[:complete] end between characters
        self.state = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        self.state = self.table.state_after(self.state, token_id)
        if self.state == 0:
            self.complete = len(self.ids)
        piece = self.decoder.step(self.tokenizer.backend_tokenizer, token_id) or ""
        self.text += piece
        return piece

    def finish(self) -> str:
        full = self.tokenizer.decode(self.ids[:self.complete], skip_special_tokens=True)
        rest = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += rest
        return rest


class StopStrings:
    """Cuts text before the first stop string, holding back any tail that could be the start of one.

    `feed(text)` returns (text safe to show, whether a stop string was found); after a stop the
    text beyond it is dropped. `flush()` returns what was held back (at the end of a generation
    that found no stop string)."""

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buffer = self.held + text
        # The stop string completed first (the smallest end; of those, the longest) wins, as it would
        # character by character, so the result does not depend on how the text was cut into pieces.
        ends = [(i + len(s), i) for s in self.stops if (i := buffer.find(s)) >= 0]
        if ends:
            self.held, self.stopped = "", True
            return buffer[:min(ends)[1]], True
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(buffer)), 0, -1)
                    if buffer.endswith(s[:n])), default=0)
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        held, self.held = ("" if self.stopped else self.held), ""
        return held


# ----------------------------------------------------------------------------- settings and results

@dataclass
class Sampling:
    """How to pick tokens. temperature 0 is greedy decoding (then top_p and top_k do not matter)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def generate_kwargs(self) -> dict:
        """The `model.generate` options (every sampling option set, so the model's own defaults do not leak in)."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature <= 0:
            return {**kwargs, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**kwargs, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k}


@dataclass
class Generation:
    """What one generation produced: its text, its token counts and why it ended
    ("stop": an end token or a stop string, "length": max_new_tokens, "cancelled")."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
