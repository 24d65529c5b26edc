"""`langadapt corpus stats`: the figures of `corpus.stats`, optionally with a tokenizer's token counts.

The command sits in the tokenizer stage because `--tokenizer` loads one; the statistics themselves
are `corpus.stats.corpus_stats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from langadapt.corpus import CORPUS_HELP, ReadingOptions
from langadapt.corpus.stats import corpus_stats, format_stats
from langadapt.options import Options, OptionError, embed, option
from langadapt.outputs import write_json_atomic
from langadapt.tokenizer.load import load_tokenizer


@dataclass
class CorpusStatsOptions(Options):
    """Files, records, characters, units, script share, duplicates and bad bytes of a corpus.

    Stream a corpus once and print what is in it: files, records, characters, counting units of the
    language, target-script share, exact-duplicate records, bad bytes replaced, and records mostly in
    another script. With --tokenizer, also tokens per character and per unit."""

    paths: list[str] = option([], help=CORPUS_HELP, positional=True, metavar="PATH", required=True)
    reading: ReadingOptions = embed(ReadingOptions)
    tokenizer: str | None = option(None, metavar="SPEC",
                                   help="also count tokens with this tokenizer (HF dir, tokenizer.model, .gguf, alias)")
    json: str | None = option(None, metavar="FILE", help="also write the figures to this JSON file")

    def __post_init__(self):
        super().__post_init__()
        if self.json and (Path(self.json).is_dir() or not Path(self.json).parent.is_dir()):
            raise OptionError("json", f"{self.json}: expected a file path in an existing directory")


def corpus_stats_command(opts: CorpusStatsOptions) -> int:
    """Print (and with --json, write) the statistics of a corpus."""
    start = time.perf_counter()
    count_tokens = None
    if opts.tokenizer:
        tokenizer = load_tokenizer(opts.tokenizer)

        def count_tokens(texts: list[str]) -> int:
            return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    result = corpus_stats(opts.paths, opts.reading, count_tokens, progress=True)
    if opts.tokenizer:
        result["tokenizer"] = opts.tokenizer
    result["seconds"] = round(time.perf_counter() - start, 3)
    print(format_stats(result))
    print(f"({result['seconds']:.2f} s)")
    if opts.json:
        write_json_atomic(Path(opts.json), result)
    return 0
