"""Merging a donor SentencePiece model into a SentencePiece BPE base (Llama-1/2, Mistral, Baichuan).

Everything here works on `sentencepiece_model_pb2.ModelProto` objects and is pure: no files,
no printing. The command around it is `langadapt.tokenizer.merge`.

How sentencepiece's BPE encodes (bpe_model.cc): start from single characters, then repeatedly
merge the adjacent pair whose concatenation is a piece of the vocabulary with the HIGHEST score
(ties: leftmost). So a piece's score is its merge priority, and a piece that cannot be made by
joining two pieces of the vocabulary is never produced ("unreachable").

Two merge modes:

- `compat_merge`: the published Chinese-LLaMA recipe. Every donor piece missing from the base is
  appended with score 0, in donor order. All added pieces then outrank every base merge and tie
  among themselves, the donor's merge order is lost, and some pieces are unreachable.
- `merge_sentencepiece` (default): only donor pieces holding target-script characters are added
  (others would change how English is cut), and every piece holding a target-script character
  (added or already in the base) gets a score that follows the donor's own order, in one block
  above (or below) all base merges. Such pieces can never fire on text without that script, so
  other text encodes exactly as before. Unreachable pieces are repaired by adding the target-script
  intermediate pieces they need, or dropped; the report says which.
"""

from __future__ import annotations

from typing import Callable

from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from langadapt.errors import LangadaptError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
SPACE = "▁"
EXAMPLES = 20  # examples kept per report list


def model_proto():
    """A new, empty `ModelProto` (sentencepiece's protobuf class)."""
    return sentencepiece_model_pb2.ModelProto()


def read_model(path) -> "object":
    """Parse a SentencePiece `.model` file into a `ModelProto`; LangadaptError if it is not one."""
    proto = model_proto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, DecodeError, ValueError) as e:
        raise LangadaptError(f"{path}: not a readable SentencePiece model ({e})") from e
    if not proto.pieces:
        raise LangadaptError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def _new_piece(proto, piece: str, score: float, type_: int = NORMAL) -> None:
    p = proto.pieces.add()
    p.piece = piece
    p.score = score
    if type_ != NORMAL:
        p.type = type_


# ----------------------------------------------------------------------------- reachability

def unreachable_pieces(proto) -> list[str]:
    """Normal pieces (2+ characters) that BPE can never produce, in vocabulary order.

    A piece is produced by merging two adjacent symbols whose concatenation is in the vocabulary,
    so a piece is reachable when it is one character, or some split of it into a left and a right
    part gives two pieces of the vocabulary (normal or user-defined). Chinese-LLaMA-2's tokenizer
    has 630 pieces without such a split (e.g. 意大利: neither 意+大利 nor 意大+利 are pieces).
    """
    vocab = {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)}
    return [p.piece for p in proto.pieces if p.type == NORMAL and not _has_split(p.piece, vocab)]


def _has_split(piece: str, vocab: set[str]) -> bool:
    if len(piece) <= 1:
        return True
    return any(piece[:i] in vocab and piece[i:] in vocab for i in range(1, len(piece)))


def _plan_intermediates(piece: str, vocab: set[str], can_add: Callable[[str], bool],
                        planned: frozenset = frozenset(), depth: int = 0) -> list[str] | None:
    """Pieces to add (shortest first) so that `piece` gets a split into two vocabulary pieces;
    None when that would need a piece `can_add` refuses. Prefers the split whose existing part
    is longest, so few and long intermediates are added."""
    def known(s: str) -> bool:
        return s in vocab or s in planned

    if len(piece) == 1:
        return [] if known(piece) else ([piece] if can_add(piece) else None)
    if any(known(piece[:i]) and known(piece[i:]) for i in range(1, len(piece))):
        return []
    if depth > 16:
        return None
    best: list[str] | None = None
    splits = sorted(range(1, len(piece)),
                    key=lambda i: -max(i if known(piece[:i]) else 0, len(piece) - i if known(piece[i:]) else 0))
    for i in splits[:4]:  # the most promising splits are enough
        plan: list[str] = []
        for part in (piece[:i], piece[i:]):
            if known(part) or part in plan:
                continue
            sub = _plan_intermediates(part, vocab, can_add, planned | frozenset(plan), depth + 1)
            if sub is None or not can_add(part):
                plan = None
                break
            plan += [s for s in sub if s not in plan] + ([part] if len(part) > 1 else [])
        if plan is not None and (best is None or len(plan) < len(best)):
            best = plan
            if len(best) <= 1:
                break
    return best


# ----------------------------------------------------------------------------- compat recipe

def compat_merge(base, donor):
    """Chinese-LLaMA's recipe: append every donor piece missing from `base`, score 0, in donor order.

    Returns (merged proto, report). Reproduces the published Chinese-LLaMA v1 tokenizer byte for
    byte from LLaMA's tokenizer.model and chinese_sp.model (49,953 pieces).
    """
    merged = model_proto()
    merged.CopyFrom(base)
    have = {p.piece for p in base.pieces}
    added = []
    for p in donor.pieces:
        if p.piece not in have:
            _new_piece(merged, p.piece, 0.0)
            have.add(p.piece)
            added.append(p.piece)
    unreachable = [p for p in unreachable_pieces(merged) if p in set(added)]
    report = {
        "mode": "compat-chinese-llama",
        "vocab_size_before": len(base.pieces),
        "vocab_size_after": len(merged.pieces),
        "pieces_added": len(added),
        "added_examples": added[:EXAMPLES],
        "pieces_skipped": {"already in base": {"count": len(donor.pieces) - len(added)}},
        "scores": "every added piece has score 0 (outranks all base merges, ties among added pieces)",
        "unreachable": {"count": len(unreachable), "examples": unreachable[:EXAMPLES],
                        "action": "none (the recipe keeps them; they are never produced)"},
    }
    return merged, report


# ----------------------------------------------------------------------------- default merge

def donor_order(donor) -> list[str]:
    """The donor's normal pieces in priority order: BPE by id (its merge order), unigram by log-prob."""
    normal = [(i, p) for i, p in enumerate(donor.pieces) if p.type == NORMAL]
    if donor.trainer_spec.model_type == UNIGRAM:
        normal.sort(key=lambda ip: (-ip[1].score, ip[0]))
    return [p.piece for _, p in normal]


def normalizer_mismatch(base, donor) -> str | None:
    """A sentence saying how the donor's normalisation differs from the base's, or None."""
    b, d = base.normalizer_spec, donor.normalizer_spec
    diffs = []
    if (b.name or "nmt_nfkc") != (d.name or "nmt_nfkc"):
        diffs.append(f"normalization rule '{d.name}' vs the base's '{b.name}'")
    if b.add_dummy_prefix != d.add_dummy_prefix:
        diffs.append(f"add_dummy_prefix {d.add_dummy_prefix} vs the base's {b.add_dummy_prefix}")
    if b.remove_extra_whitespaces != d.remove_extra_whitespaces:
        diffs.append(f"remove_extra_whitespaces {d.remove_extra_whitespaces} vs the base's {b.remove_extra_whitespaces}")
    if not diffs:
        return None
    return ("the donor was trained with " + "; ".join(diffs) + ": the merged tokenizer uses the base's "
            "normalisation, so donor pieces learnt on differently normalised text may never match")


def merge_sentencepiece(base, donor, is_target_char: Callable[[str], bool], placement: str = "above"):
    """Merge `donor` into the SentencePiece BPE `base`, keeping the donor's segmentation of target text.

    Base pieces keep their ids and strings; new pieces are appended. Returns (merged proto, report).
    `placement`: put the target-script block of scores "above" or "below" all base merges.
    """
    if base.trainer_spec.model_type != BPE:
        raise LangadaptError("the base SentencePiece model is not BPE (model_type "
                             f"{base.trainer_spec.model_type}); only BPE bases (Llama, Mistral, Baichuan) "
                             "can be merged in the default mode; use --compat chinese-llama to append pieces")
    if placement not in ("above", "below"):
        raise ValueError(f"placement must be 'above' or 'below', not {placement!r}")

    def has_target(s: str) -> bool:
        return any(is_target_char(c) for c in s)

    base_index = {p.piece: i for i, p in enumerate(base.pieces)}
    vocab = {p.piece for p in base.pieces if p.type in (NORMAL, USER_DEFINED)}
    skipped: dict[str, list[str]] = {}
    order: list[str] = []  # target-script pieces (base and new) in donor priority order
    new: set[str] = set()
    for piece in donor_order(donor):
        if piece in base_index:
            if base.pieces[base_index[piece]].type != NORMAL:
                skipped.setdefault("special piece of the base", []).append(piece)
            elif has_target(piece):
                order.append(piece)
            else:
                skipped.setdefault("already in base", []).append(piece)
        elif not has_target(piece):
            skipped.setdefault("not target script", []).append(piece)
        else:
            order.append(piece)
            new.add(piece)
    for p in donor.pieces:
        if p.type != NORMAL:
            skipped.setdefault("special piece of the donor", []).append(p.piece)
    # Base pieces with target script that the donor lacks go at the bottom of the block.
    in_order = set(order)
    base_target = [p.piece for p in base.pieces if p.type == NORMAL and has_target(p.piece)]
    order += [p for p in base_target if p not in in_order]

    # Repair unreachable new pieces: add target-script intermediates, or drop the piece.
    vocab |= new
    fixed, dropped = [], []
    for _ in range(8):  # dropping a piece can orphan a later one; repeat until stable
        changed = False
        result: list[str] = []
        for piece in order:
            if piece not in new or _has_split(piece, vocab):
                result.append(piece)
                continue
            plan = _plan_intermediates(piece, vocab, has_target)
            if plan is None:
                vocab.discard(piece)
                new.discard(piece)
                reason = ("needs a non-target-script piece that is not in the base"
                          if len(piece) > 1 else "character not in the vocabulary")
                dropped.append({"piece": piece, "reason": reason})
            else:
                result += [s for s in plan if s not in vocab]
                vocab.update(plan)
                new.update(plan)
                fixed.append({"piece": piece, "added": plan})
                result.append(piece)
            changed = True
        order = result
        if not changed:
            break

    merged = model_proto()
    merged.CopyFrom(base)
    scored = {p.piece: p.score for p in base.pieces if p.type == NORMAL and p.score > -1e8}
    n = len(order)
    if placement == "above":
        top = max(scored.values(), default=0.0)
        score_of = {piece: top + n - k for k, piece in enumerate(order)}
    else:
        bottom = min(scored.values(), default=0.0)
        score_of = {piece: bottom - 1 - k for k, piece in enumerate(order)}
    for p in merged.pieces:
        if p.piece in score_of:
            p.score = score_of[p.piece]
    added = [piece for piece in order if piece in new]
    for piece in added:
        _new_piece(merged, piece, score_of[piece])

    left = [p for p in unreachable_pieces(merged) if p in new]
    base_unreachable = unreachable_pieces(base)
    report = {
        "mode": "default",
        "placement": placement,
        "donor_model_type": "unigram" if donor.trainer_spec.model_type == UNIGRAM else "bpe",
        "vocab_size_before": len(base.pieces),
        "vocab_size_after": len(merged.pieces),
        "pieces_added": len(added),
        "added_examples": added[:EXAMPLES],
        "base_pieces_rescored": len(order) - len(added),
        "scores": (f"{n} target-script pieces scored in donor order ({'unigram log-prob' if donor.trainer_spec.model_type == UNIGRAM else 'BPE merge order'}), "
                   f"as one block {placement} all base merges; other base scores unchanged"),
        "pieces_skipped": {reason: {"count": len(items), "examples": items[:EXAMPLES]}
                           for reason, items in skipped.items()},
        "unreachable": {
            "fixed_by_adding_intermediates": {"count": len(fixed), "examples": fixed[:EXAMPLES]},
            "dropped": {"count": len(dropped), "examples": dropped[:EXAMPLES]},
            "left": len(left),
            "base_unreachable_untouched": len(base_unreachable),
        },
    }
    if left:
        raise AssertionError(f"merge left unreachable pieces: {left[:10]}")
    return merged, report
