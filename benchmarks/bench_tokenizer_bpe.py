"""Benchmark: extending a byte-level BPE tokenizer (SmolLM2) with Tibetan tokens.

    .venv/bin/python benchmarks/bench_tokenizer_bpe.py [--data ../shared/data] [--tokens 20000] [--out FILE]

Trains on Tibet Times + tibetcm + Derge Kangyur (kangyur markup cleaned) and extends the
embedded SmolLM2 tokenizer with `--tokens` new tokens, then measures on bo/dev-conllu (held out):
tokens per Tibetan syllable, letters only (`tibetan_syllables`, 28,767 on dev-conllu: the unit of
the issue's target, <= 0.80, and of its baseline, SmolLM2 alone 8.9), and tokens per profile unit
(`profile.count_units`: syllables + each shad, 30,700), for SmolLM2 alone, the trained BPE alone and the
extension with new merges ranked first (the default) and last; the extension vs the trained BPE
alone on the same target-script pieces; the seed sentence's pieces; that Chinese and Korean text
keeps its ids; the wall time and peak memory of train + extend.

The two steps timed here (`train_target_bpe`, `build_extended`) are what
`extend_byte_level_bpe` runs; they are called separately to keep the trained merges for the
comparisons. Prints the figures and writes them as JSON (default: bench_tokenizer_bpe.json next
to this file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
from pathlib import Path

from langadapt.corpus import iter_texts
from langadapt.lang import get_profile
from langadapt.lang.tibetan import tibetan_syllables
from langadapt.tokenizer.load import load_tokenizer
from langadapt.tokenizer.merge_bpe import bpe_alone, build_extended, target_piece_tokens, train_target_bpe, \
    training_margin, training_sentences
from langadapt.tokenizer.train import MAX_PIECE_CHARS
from langadapt.tokenizer.pretokenize import script_aware_pre_tokenizer, target_pattern

HERE = Path(__file__).resolve().parent
SEED = "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=HERE / "bench_tokenizer_bpe.json")
    parser.add_argument("--compare-byte-training", action="store_true",
                        help="also train directly on bytes (char_aligned=False) and report its figures")
    args = parser.parse_args()
    bo = get_profile("bo")
    data = args.data

    def train_texts():  # as extend_byte_level_bpe feeds the trainer: sentences, repeats skipped
        return training_sentences(itertools.chain(
            iter_texts([data / "bo" / "news-tibettimes-2016", data / "bo" / "literature-tibetcm"], profile=bo),
            iter_texts(data / "bo" / "classical-kangyur", profile=bo, clean="kangyur")), bo)

    dev = list(iter_texts(data / "bo" / "dev-conllu", profile=bo))
    syllables = sum(len(tibetan_syllables(t)) for t in dev)  # letters only: the targets' unit
    units = sum(bo.count_units(t) for t in dev)  # + each shad: the profile's unit
    base = load_tokenizer("smollm2-135m")
    _, pattern = script_aware_pre_tokenizer(json.loads(base.backend_tokenizer.to_str())["pre_tokenizer"], bo)

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    vocab_size = 256 + args.tokens + training_margin(base, args.tokens, bo)
    trained, _ = train_target_bpe(train_texts(), pattern, target_pattern(bo), vocab_size,
                                  base.backend_tokenizer.normalizer, max_token_length=MAX_PIECE_CHARS.get("bo"))
    extended, report = build_extended(base, trained, args.tokens, bo, new_merges_first=True)
    seconds = time.perf_counter() - start
    rss_after = peak_rss_mb()
    last, last_report = build_extended(base, trained, args.tokens, bo, new_merges_first=False)
    alone = bpe_alone(trained[:report["trained_merges_used"]], pattern)
    alone_last = bpe_alone(trained[:last_report["trained_merges_used"]], pattern)

    counts: dict[str, int] = {}

    def per_syllable(encode, name: str | None = None) -> float:
        n = sum(len(encode(t)) for t in dev)
        if name:
            counts[name] = n
        return round(n / syllables, 4)

    hf = lambda tok: (lambda t: tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    figures = {
        "train_files": ["bo/news-tibettimes-2016", "bo/literature-tibetcm", "bo/classical-kangyur (clean=kangyur)"],
        "held_out": "bo/dev-conllu",
        "held_out_records": len(dev),
        "held_out_syllables": syllables,
        "held_out_units": units,
        "tokens_requested": args.tokens,
        "max_token_chars": MAX_PIECE_CHARS.get("bo"),
        "tokens_per_syllable": {
            "smollm2": per_syllable(hf(base), "smollm2"),
            "trained_bpe_alone": per_syllable(lambda t: alone.encode(t).ids, "trained_bpe_alone"),
            "extended_new_merges_first": per_syllable(hf(extended), "extended_new_merges_first"),
            "extended_new_merges_last": per_syllable(hf(last), "extended_new_merges_last"),
        },
        "target_piece_tokens": {
            "extended_first": target_piece_tokens(extended.backend_tokenizer, dev, bo),
            "alone_at_same_cut": target_piece_tokens(alone, dev, bo),
            "extended_last": target_piece_tokens(last.backend_tokenizer, dev, bo),
            "alone_at_last_cut": target_piece_tokens(alone_last, dev, bo),
        },
        "seed_sentence_pieces": {
            "smollm2": len(base.tokenize(SEED)),
            "trained_bpe_alone": len(alone.encode(SEED).ids),
            "extended": len(extended.tokenize(SEED)),
            "extended_pieces": [extended.convert_tokens_to_string([p]) for p in extended.tokenize(SEED)],
        },
        "round_trip_held_out": all(extended.decode(hf(extended)(t)) == t for t in dev),
        "train_plus_extend_seconds": round(seconds, 1),
        "peak_rss_mb": {"before": round(rss_before), "after_train_extend": round(rss_after)},
        "report": {k: v for k, v in report.items() if k != "pre_tokenizer"},
        "report_merges_last": {k: v for k, v in last_report.items() if k != "pre_tokenizer"},
    }
    figures["tokens"] = counts
    figures["tokens_per_unit"] = {k: round(n / units, 4) for k, n in counts.items()}
    pieces = figures["target_piece_tokens"]
    figures["ratio_to_alone"] = {"first": round(pieces["extended_first"] / pieces["alone_at_same_cut"], 4),
                                 "last": round(pieces["extended_last"] / pieces["alone_at_last_cut"], 4)}
    # Text without Tibetan must keep its ids: Chinese and Korean records from the shared data.
    other = list(itertools.islice(iter_texts(data / "zh" / "reviews-chnsenticorp", column="review"), 500)) + \
        list(itertools.islice(iter_texts(data / "ko" / "kornli" / "KorNLI" / "xnli.dev.ko.tsv",
                                         column="sentence2"), 500))
    figures["other_scripts_same_ids"] = f"{sum(hf(base)(t) == hf(extended)(t) for t in other)}/{len(other)}"

    if args.compare_byte_training:
        start = time.perf_counter()
        byte_trained, _ = train_target_bpe(train_texts(), pattern, target_pattern(bo), vocab_size,
                                           base.backend_tokenizer.normalizer, char_aligned=False)
        # (no max_token_length here: it would count bytes, not characters)
        byte_ext, byte_report = build_extended(base, byte_trained, args.tokens, bo)
        figures["byte_training"] = {
            "train_plus_extend_seconds": round(time.perf_counter() - start, 1),
            "tokens_per_syllable": per_syllable(hf(byte_ext), "byte_training"),
            "tokens_per_unit": round(counts["byte_training"] / units, 4),
            "seed_sentence_pieces": len(byte_ext.tokenize(SEED)),
            "pieces_not_ending_on_a_character": sum(
                "\ufffd" in byte_ext.decode([i]) for i in range(len(base), len(byte_ext))),
            "merges_skipped": byte_report["merges_skipped"],
        }

    print(json.dumps(figures, indent=1, ensure_ascii=False))
    args.out.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
