"""Benchmark: SentencePiece tokenizer extension (train + merge) on real Tibetan and Chinese text.

    .venv/bin/python benchmarks/bench_tokenizer_spm.py [--data ../shared/data] [--out FILE]

1. Tibetan: train donors on Tibet Times + tibetcm + Derge Kangyur (kangyur markup cleaned), merge
   into Llama-2 (compat recipe and default), tokens per syllable on bo/dev-conllu (held out).
2. Chinese: Llama-2 vs Chinese-LLaMA-2 vs our own merge trained on zh text (10% held out),
   tokens per character.
3. Cost: `tokenizer merge --corpus` (train + merge) on 10 MB and 50 MB of Tibetan text (the files
   repeated), each in a subprocess: wall time and peak memory (ru_maxrss).

Prints the figures and writes them as JSON (default: bench_tokenizer_spm.json next to this file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from langadapt.corpus import iter_texts
from langadapt.lang import get_profile
from langadapt.tokenizer.merge_spm import compat_merge, merge_sentencepiece, model_proto, read_model, \
    unreachable_pieces
from langadapt.tokenizer.train import train_sentencepiece

HERE = Path(__file__).resolve().parent
SEED = "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།"
BO_CONFIGS = [("bpe", 8000), ("bpe", 16000), ("bpe", 20000), ("unigram", 20000)]


def tokens(proto_or_bytes, texts: list[str]) -> int:
    data = proto_or_bytes if isinstance(proto_or_bytes, bytes) else proto_or_bytes.SerializeToString()
    sp = spm.SentencePieceProcessor(model_proto=data)
    return sum(len(ids) for ids in sp.encode(texts))


def parse(data: bytes):
    proto = model_proto()
    proto.ParseFromString(data)
    return proto


def bo_texts(data: Path):
    bo = get_profile("bo")
    return itertools.chain(
        iter_texts([data / "bo" / "news-tibettimes-2016", data / "bo" / "literature-tibetcm"], profile=bo),
        iter_texts(data / "bo" / "classical-kangyur", profile=bo, clean="kangyur"))


def bench_tibetan(data: Path) -> dict:
    bo = get_profile("bo")
    llama2 = read_model(data / "tokenizers" / "llama2" / "tokenizer.model")
    dev = list(iter_texts(data / "bo" / "dev-conllu", profile=bo))
    syllables = sum(bo.count_units(t) for t in dev)
    english = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2\n"]

    def per_syl(model) -> float:
        return round(tokens(model, dev) / syllables, 4)

    def seed(model) -> int:
        data_ = model.SerializeToString()
        return len(spm.SentencePieceProcessor(model_proto=data_).encode(SEED))

    result = {"dev_sentences": len(dev), "dev_syllables": syllables,
              "llama2": {"tokens_per_syllable": per_syl(llama2), "seed_pieces": seed(llama2)}, "runs": []}
    for model_type, vocab in BO_CONFIGS:
        t0 = time.time()
        donor_bytes, facts = train_sentencepiece(bo_texts(data), bo, vocab, model_type, progress=False)
        train_s = time.time() - t0
        donor = parse(donor_bytes)
        compat, compat_report = compat_merge(llama2, donor)
        run = {"model_type": model_type, "vocab_size": vocab, "train_seconds": round(train_s, 1),
               "train_peak_rss_mb": facts["peak_rss_mb"], "train_characters": facts["characters"],
               "donor": {"tokens_per_syllable": per_syl(donor), "seed_pieces": seed(donor)},
               "compat": {"tokens_per_syllable": per_syl(compat), "seed_pieces": seed(compat),
                          "added": compat_report["pieces_added"],
                          "unreachable": len(unreachable_pieces(compat)),
                          "english_unchanged": _same(compat, llama2, english)}}
        for placement in ("above", "below"):
            t0 = time.time()
            merged, report = merge_sentencepiece(llama2, donor, bo.is_target_char, placement)
            run[f"default_{placement}"] = {
                "tokens_per_syllable": per_syl(merged), "seed_pieces": seed(merged),
                "added": report["pieces_added"], "unreachable": len(unreachable_pieces(merged)),
                "repaired": report["unreachable"]["fixed_by_adding_intermediates"]["count"],
                "dropped": report["unreachable"]["dropped"]["count"],
                "merge_seconds": round(time.time() - t0, 2),
                "english_unchanged": _same(merged, llama2, english)}
        result["runs"].append(run)
        print(json.dumps(run, ensure_ascii=False), flush=True)
    return result


def _same(a, b, texts) -> bool:
    sa = spm.SentencePieceProcessor(model_proto=a.SerializeToString())
    sb = spm.SentencePieceProcessor(model_proto=b.SerializeToString())
    return sa.encode(texts) == sb.encode(texts)


def bench_chinese(data: Path, vocab: int = 20000) -> dict:
    zh = get_profile("zh")
    z = data / "zh"
    texts = list(itertools.chain(
        iter_texts(z / "instructions-alpaca-zh" / "翻译后的中文数据", profile=zh, field="output"),
        iter_texts(z / "instructions-alpaca-zh" / "翻译后的中文数据", profile=zh, field="instruction"),
        iter_texts(z / "summarization-csl" / "dev.tsv", profile=zh, column=1),
        iter_texts(z / "reviews-chnsenticorp", profile=zh, column="review")))
    random.Random(0).shuffle(texts)
    cut = len(texts) // 10
    held, train = texts[:cut], texts[cut:]
    chars = sum(zh.count_units(t) for t in held)
    llama2 = read_model(data / "tokenizers" / "llama2" / "tokenizer.model")
    cl2 = read_model(data / "tokenizers" / "chinese-llama-2" / "tokenizer.model")
    t0 = time.time()
    donor_bytes, facts = train_sentencepiece(train, zh, vocab, "bpe", progress=False)
    donor = parse(donor_bytes)
    merged, report = merge_sentencepiece(llama2, donor, zh.is_target_char)
    compat, _ = compat_merge(llama2, donor)

    def per_char(model) -> float:
        return round(tokens(model, held) / chars, 4)

    return {
        "train_records": len(train), "held_out_records": len(held), "held_out_characters": chars,
        "donor_vocab": vocab, "seconds": round(time.time() - t0, 1),
        "llama2": {"tokens_per_character": per_char(llama2), "vocab": len(llama2.pieces)},
        "chinese_llama2": {"tokens_per_character": per_char(cl2), "vocab": len(cl2.pieces),
                           "unreachable": len(unreachable_pieces(cl2))},
        "own_donor_alone": {"tokens_per_character": per_char(donor)},
        "own_compat": {"tokens_per_character": per_char(compat), "vocab": len(compat.pieces),
                       "unreachable": len(unreachable_pieces(compat))},
        "own_default": {"tokens_per_character": per_char(merged), "vocab": len(merged.pieces),
                        "added": report["pieces_added"], "unreachable": len(unreachable_pieces(merged))},
    }


def _write_corpus(path: Path, size_mb: int, data: Path) -> None:
    """SIZE MB of Tibetan text: the three training sources repeated, one record per line."""
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < size_mb * 1_000_000:
            for text in bo_texts(data):
                line = text + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= size_mb * 1_000_000:
                    break


def _cost_child(corpus: Path, data: Path, vocab: int, extra: list[str]) -> None:
    """Run in a fresh subprocess: `tokenizer merge --corpus` (train + merge); print wall time and
    this process's peak memory as JSON."""
    from langadapt.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        code = main(["tokenizer", "merge", "--base", str(data / "tokenizers" / "llama2" / "tokenizer.model"),
                     "--corpus", str(corpus), "--vocab-size", str(vocab), "--lang", "bo",
                     "--out", str(Path(tmp) / "out"), *extra])
        wall = time.time() - t0
        report = json.loads((Path(tmp) / "out" / "adaptation.json").read_text()) if code == 0 else {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size_mb": round(corpus.stat().st_size / 1e6, 1), "exit": code,
                      "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak / 1024, 1),
                      "donor_sentences": report.get("donor_training", {}).get("sentences")}))


def bench_cost(data: Path, vocab: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (10, 50):
            _write_corpus(Path(tmp) / f"bo-{size}mb.txt", size, data)
        for size, extra in ((10, []), (50, []), (10, ["--sample-sentences", "20000"]),
                            (50, ["--sample-sentences", "20000"])):
            out = subprocess.run([sys.executable, __file__, "--data", str(data), "--_cost",
                                  str(Path(tmp) / f"bo-{size}mb.txt"), "--cost-vocab", str(vocab), "--", *extra],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["options"] = " ".join(extra) or "defaults"
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--out", default=str(HERE / "bench_tokenizer_spm.json"))
    ap.add_argument("--only", choices=["bo", "zh", "cost"], default=None)
    ap.add_argument("--cost-vocab", type=int, default=20000)
    ap.add_argument("--_cost", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data)
    if args._cost is not None:
        _cost_child(args._cost, data, args.cost_vocab, args.extra)
        return
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu_count": os.cpu_count()}
    if args.only in (None, "bo"):
        result["tibetan"] = bench_tibetan(data)
    if args.only in (None, "zh"):
        result["chinese"] = bench_chinese(data)
        print(json.dumps(result["chinese"]), flush=True)
    if args.only in (None, "cost"):
        result["cost"] = bench_cost(data, args.cost_vocab)
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
