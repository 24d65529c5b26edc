"""Benchmark: byte-level BPE extension rules and what llama.cpp makes of them (SmolLM2 + Tibetan).

    .venv/bin/python benchmarks/bench_bpe_llama_cpp.py [--data ../shared/data] [--tokens 20000] [--out FILE]

For each pre-tokenizer rule of `tokenizer merge --pre-tokenizer` (script-runs: today's default;
qwen35: llama.cpp's Qwen3.5 rule, letters with their combining marks), extends the embedded SmolLM2
tokenizer with `--tokens` Tibetan tokens trained as `bench_tokenizer_bpe.py` trains them
(bo/news-tibettimes-2016 + bo/literature-tibetcm + bo/classical-kangyur), then measures on the held-out
bo/dev-conllu (1,011 sentences):

- tokens per Tibetan syllable (letters only, 28,767 syllables) in transformers;
- whether text without Tibetan keeps SmolLM2's ids: 500 Chinese reviews, 500 Korean KorNLI sentences
  and the 1,011 English translations of dev-conllu (`# text_en`);
- with llama-cpp-python installed: the same tokenizer written to a GGUF (a random 1-layer Llama around
  it, via `export gguf`'s writer) and loaded by llama.cpp: its tokens per syllable and how many
  dev-conllu lines it tokenises exactly as transformers.

Prints the figures and writes them as JSON (default: bench_bpe_llama_cpp.json next to this file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from langadapt.corpus import iter_texts
from langadapt.lang import get_profile
from langadapt.lang.tibetan import tibetan_syllables
from langadapt.tokenizer.load import load_tokenizer
from langadapt.tokenizer.merge_bpe import extend_byte_level_bpe

HERE = Path(__file__).resolve().parent


def english_translations(folder: Path) -> list[str]:
    """The `# text_en = ...` lines of the CoNLL-U files in `folder`."""
    return [line.split("=", 1)[1].strip() for path in sorted(folder.glob("*.conllu"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("# text_en =")]


def llama_cpp_ids(tok, texts: list[str], pre: str) -> list[list[int]]:
    """llama.cpp's ids for `texts` under `tok` written to a GGUF with pre-tokenizer `pre` (a random
    1-layer Llama around it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from langadapt.export.gguf import LlamaCppVocab, write_gguf

    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_gguf(LlamaForCausalLM(config), tok, tmp, path, "f16", pre, {"benchmark": "bench_bpe_llama_cpp"})
        with LlamaCppVocab(path) as vocab:
            return [vocab.tokenize(t) for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--rules", nargs="+", default=["script-runs", "qwen35"])
    parser.add_argument("--out", type=Path, default=HERE / "bench_bpe_llama_cpp.json")
    args = parser.parse_args()
    bo, data = get_profile("bo"), args.data

    def train_texts():
        return itertools.chain(
            iter_texts([data / "bo" / "news-tibettimes-2016", data / "bo" / "literature-tibetcm"], profile=bo),
            iter_texts(data / "bo" / "classical-kangyur", profile=bo, clean="kangyur"))

    dev = list(iter_texts(data / "bo" / "dev-conllu", profile=bo))
    syllables = sum(len(tibetan_syllables(t)) for t in dev)
    other = {
        "zh": list(itertools.islice(iter_texts(data / "zh" / "reviews-chnsenticorp", column="review"), 500)),
        "ko": list(itertools.islice(iter_texts(data / "ko" / "kornli" / "KorNLI" / "xnli.dev.ko.tsv",
                                               column="sentence2"), 500)),
        "en": english_translations(data / "bo" / "dev-conllu"),
    }
    base = load_tokenizer("smollm2-135m")
    ids = lambda tok, t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    try:
        import llama_cpp  # noqa: F401
        have_llama_cpp = True
    except ImportError:
        have_llama_cpp = False

    figures = {"held_out": "bo/dev-conllu", "held_out_records": len(dev), "held_out_syllables": syllables,
               "tokens_requested": args.tokens, "rules": {}}
    figures["smollm2_tokens_per_syllable"] = round(sum(len(ids(base, t)) for t in dev) / syllables, 4)
    for rule in args.rules:
        start = time.perf_counter()
        tok, report = extend_byte_level_bpe(base, train_texts, args.tokens, bo, rule=rule)
        hf = [ids(tok, t) for t in dev]
        row = {
            "tokens_added": report["tokens_added"],
            "llama_cpp_pre_tokenizer": report["pre_tokenizer"]["llama_cpp"],
            "train_plus_extend_seconds": round(time.perf_counter() - start, 1),
            "tokens_per_syllable": round(sum(map(len, hf)) / syllables, 4),
            "seed_sentence_pieces": [tok.convert_tokens_to_string([p]) for p in tok.tokenize(dev[0][:60])],
            "other_text_same_ids": {lang: f"{sum(ids(base, t) == ids(tok, t) for t in texts)}/{len(texts)}"
                                    for lang, texts in other.items()},
            "other_text_tokens_ratio": {lang: round(sum(len(ids(tok, t)) for t in texts)
                                                    / sum(len(ids(base, t)) for t in texts), 4)
                                        for lang, texts in other.items()},
        }
        if have_llama_cpp:
            # llama.cpp has no script-runs rule: write what its converter would name, SmolLM2's ("smollm"),
            # since its check string has no Tibetan; `export gguf` refuses such a tokenizer instead
            pre = report["pre_tokenizer"]["llama_cpp"] or "smollm"
            ll = llama_cpp_ids(tok, dev, pre)
            row["llama_cpp"] = {
                "tokens_per_syllable": round(sum(map(len, ll)) / syllables, 4),
                "lines_equal_to_transformers": f"{sum(a == b for a, b in zip(hf, ll))}/{len(dev)}",
            }
        figures["rules"][rule] = row
        print(json.dumps({rule: row}, indent=1, ensure_ascii=False), flush=True)
    args.out.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
