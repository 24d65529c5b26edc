"""Instruction examples as token ids and labels: render, mask, truncate, pack, collate.

One conversation becomes one example:

1. render it with the chat template (`tokenizer/templates.py`) and find the character span of
   every assistant turn (its content and end-of-turn marker);
2. tokenise the whole text once (offsets on), so training sees exactly the tokens inference sees;
3. label a token with its own id when it starts inside a trained span, else -100. Trained spans:
   every assistant turn (default), the last one (`last_turn_only`) or everything (`train_on_prompt`);
4. if the example is longer than `max_len`, split it at the start of the last answer into prompt
   and answer; the answer keeps at least half of the budget when it needs it (cut from the right),
   the prompt keeps the rest (cut from the left, a leading BOS kept). An example with no labelled
   token left is dropped, and counted.

Packing puts several examples into one row; the position ids restart at 0 for each example and
no attention mask is passed, which transformers reads as separate sequences (attention stays
within each example, see `masking_utils.find_packed_sequence_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from langadapt.tokenizer.templates import answer_spans

IGNORE = -100


@dataclass
class EncodeStats:
    """What happened to the conversations on their way to examples."""

    conversations: int = 0
    kept: int = 0
    prompt_cut: int = 0
    answer_cut: int = 0
    dropped: int = 0
    dropped_reasons: dict = field(default_factory=dict)
    tokens: int = 0
    label_tokens: int = 0

    def facts(self) -> dict:
        return dict(self.__dict__)


def label_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (its character offsets), whether it starts inside one of `spans`."""
    marks, j = [], 0
    spans = sorted(spans)
    for start, _ in offsets:
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        marks.append(j < len(spans) and spans[j][0] <= start)
    return marks


def truncate(ids: list[int], labels: list[int], answer_start: int, max_len: int,
             bos_id: int | None) -> tuple[list[int], list[int], bool, bool]:
    """Fit one example into `max_len` tokens: (ids, labels, prompt was cut, answer was cut).

    The prompt is `ids[:answer_start]` (cut from the left, keeping a leading BOS), the answer the
    rest (cut from the right). The answer keeps max(max_len - prompt, max_len // 2) tokens at most.
    """
    if len(ids) <= max_len:
        return ids, labels, False, False
    prompt_len, answer_len = answer_start, len(ids) - answer_start
    keep_answer = min(answer_len, max(max_len - prompt_len, max_len // 2))
    keep_prompt = max_len - keep_answer
    head = 1 if keep_prompt > 0 and prompt_len > 0 and bos_id is not None and ids[0] == bos_id else 0
    tail = keep_prompt - head
    prompt_ids = ids[:head] + (ids[prompt_len - tail:prompt_len] if tail > 0 else [])
    prompt_labels = labels[:head] + (labels[prompt_len - tail:prompt_len] if tail > 0 else [])
    end = answer_start + keep_answer
    return (prompt_ids + ids[answer_start:end], prompt_labels + labels[answer_start:end],
            keep_prompt < prompt_len, keep_answer < answer_len)


def encode_conversation(tokenizer, template: str, messages: list[dict], max_len: int, *,
                        train_on_prompt: bool = False, last_turn_only: bool = False,
                        truncate_long: bool = True) -> tuple[dict | None, str]:
    """One conversation as {"input_ids", "labels"} (or None, with the reason it was dropped) and
    what truncation did ("", "prompt", "answer", "prompt+answer")."""
    text, spans = answer_spans(tokenizer, template, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    trained = [(0, len(text))] if train_on_prompt else (spans[-1:] if last_turn_only else spans)
    labels = [t if on else IGNORE for t, on in zip(ids, label_tokens(offsets, trained))]
    last = spans[-1][0]
    answer_start = next((i for i, (s, _) in enumerate(offsets) if s >= last), len(ids))
    if len(ids) > max_len and not truncate_long:
        return None, f"longer than max_seq_len ({len(ids)} > {max_len} tokens)"
    ids, labels, prompt_cut, answer_cut = truncate(ids, labels, answer_start, max_len, tokenizer.bos_token_id)
    if all(label == IGNORE for label in labels):
        return None, "no answer token fits in max_seq_len"
    cut = "+".join(name for name, flag in (("prompt", prompt_cut), ("answer", answer_cut)) if flag)
    return {"input_ids": ids, "labels": labels}, cut


def encode_conversations(tokenizer, template: str, conversations: list[list[dict]], max_len: int,
                         progress: bool = False, **options) -> tuple[list[dict], EncodeStats]:
    """Encode many conversations (see `encode_conversation`); the dropped ones are counted, not kept."""
    stats = EncodeStats(conversations=len(conversations))
    examples = []
    for messages in tqdm(conversations, desc="encoding", unit="example", disable=not progress):
        example, note = encode_conversation(tokenizer, template, messages, max_len, **options)
        if example is None:
            stats.dropped += 1
            stats.dropped_reasons[note] = stats.dropped_reasons.get(note, 0) + 1
            continue
        stats.kept += 1
        stats.prompt_cut += "prompt" in note
        stats.answer_cut += "answer" in note
        stats.tokens += len(example["input_ids"])
        stats.label_tokens += sum(label != IGNORE for label in example["labels"])
        examples.append(example)
    return examples, stats


def pack(examples: list[dict], max_len: int) -> list[dict]:
    """Greedily fill rows of at most `max_len` tokens with whole examples, in order; each row holds
    `position_ids` that restart at 0 for every example."""
    rows: list[dict] = []
    for ex in examples:
        n = len(ex["input_ids"])
        if not rows or len(rows[-1]["input_ids"]) + n > max_len:
            rows.append({"input_ids": [], "labels": [], "position_ids": []})
        row = rows[-1]
        row["input_ids"] += ex["input_ids"]
        row["labels"] += ex["labels"]
        row["position_ids"] += list(range(n))
    return rows


def collate(batch: list[dict], pad_id: int) -> dict:
    """Pad a batch on the right. Unpacked rows get an attention mask; packed rows (with
    `position_ids`) get none, the padding becoming one more sequence whose labels are ignored."""
    width = max(len(row["input_ids"]) for row in batch)
    packed = "position_ids" in batch[0]
    out = {"input_ids": [], "labels": [], "position_ids" if packed else "attention_mask": []}
    for row in batch:
        n, gap = len(row["input_ids"]), width - len(row["input_ids"])
        out["input_ids"].append(row["input_ids"] + [pad_id] * gap)
        out["labels"].append(row["labels"] + [IGNORE] * gap)
        if packed:
            out["position_ids"].append(row["position_ids"] + list(range(gap)))
        else:
            out["attention_mask"].append([1] * n + [0] * gap)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
