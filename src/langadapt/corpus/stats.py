"""What is in a corpus, in one streaming pass (the figures of `langadapt corpus stats`).

Figures: files, records, characters, counting units (the profile's unit), target-script
share (of all letters), exact-duplicate record share (a set of 8-byte blake2b hashes: about
70 bytes of memory per distinct record, never the text), bad bytes replaced, the share of records
mostly in another script (target-script share < 0.5, records with letters only), and with a
tokenizer: tokens per character and tokens per unit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from langadapt.corpus.read import ReadingOptions, ReadStats

OTHER_SCRIPT_THRESHOLD = 0.5  # a record is "mostly another script" below this target share
OTHER_SCRIPT_WARN = 0.10  # warn when more than this share of records is mostly another script
_TOKENIZE_BATCH = 256


def corpus_stats(paths, reading: ReadingOptions, count_tokens: Callable[[list[str]], int] | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Stream the corpus once and return its statistics as a JSON-able dict; `count_tokens(texts)`
    (the tokens of a batch of records) adds tokens per character and per unit."""
    profile = reading.profile()
    stats = ReadStats()
    seen: set[bytes] = set()
    duplicates = letters_records = other_records = 0
    units = letters = target_letters = tokens = 0
    other_files: dict[str, int] = {}
    batch: list[str] = []
    for rec in reading.iter_records(paths, stats=stats, progress=progress):
        text = rec.text
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
        units += profile.count_units(text)
        n_letters, n_target = profile.letter_counts(text)
        if n_letters:
            letters += n_letters
            target_letters += n_target
            letters_records += 1
            if n_target < OTHER_SCRIPT_THRESHOLD * n_letters:
                other_records += 1
                other_files[str(rec.path)] = other_files.get(str(rec.path), 0) + 1
        if count_tokens is not None:
            batch.append(text)
            if len(batch) >= _TOKENIZE_BATCH:
                tokens += count_tokens(batch)
                batch.clear()
    if count_tokens is not None and batch:
        tokens += count_tokens(batch)
    result: dict[str, Any] = {
        "language": profile.code,
        "unit_name": profile.unit_name,
        "files": stats.files,
        "records": stats.records,
        "characters": stats.characters,
        "units": units,
        "target_script_share": target_letters / letters if letters else 0.0,
        "duplicate_records": duplicates,
        "duplicate_share": duplicates / stats.records if stats.records else 0.0,
        "bad_bytes_replaced": stats.bad_bytes_replaced,
        "csv_header_rows_skipped": stats.header_rows,
        "other_script_records": other_records,
        "other_script_share": other_records / letters_records if letters_records else 0.0,
        "other_script_files": sorted(other_files, key=lambda f: -other_files[f])[:5],
    }
    if count_tokens is not None:
        result["tokens"] = tokens
        result["tokens_per_character"] = tokens / stats.characters if stats.characters else 0.0
        result["tokens_per_unit"] = tokens / units if units else 0.0
    return result


def format_stats(s: dict[str, Any]) -> str:
    """A readable two-column table of `corpus_stats` output, plus warnings."""
    rows = [
        ("language", s["language"]),
        ("files", f"{s['files']:,}"),
        ("records", f"{s['records']:,}"),
        ("characters", f"{s['characters']:,}"),
        (s["unit_name"], f"{s['units']:,}"),
        ("characters per unit", f"{s['characters'] / s['units']:.2f}" if s["units"] else "-"),
        ("target-script share", f"{s['target_script_share']:.1%}"),
        ("duplicate records", f"{s['duplicate_records']:,} ({s['duplicate_share']:.1%})"),
        ("bad bytes replaced", f"{s['bad_bytes_replaced']:,}"),
        ("mostly other script", f"{s['other_script_records']:,} records ({s['other_script_share']:.1%})"),
    ]
    if s.get("csv_header_rows_skipped"):
        rows.append(("csv header rows skipped", f"{s['csv_header_rows_skipped']:,}"))
    if "tokens" in s:
        rows += [
            ("tokens", f"{s['tokens']:,}"),
            ("tokens per character", f"{s['tokens_per_character']:.3f}"),
            (f"tokens per unit ({s['unit_name']})", f"{s['tokens_per_unit']:.3f}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if s["other_script_share"] > OTHER_SCRIPT_WARN:
        lines.append(f"warning: {s['other_script_share']:.1%} of records are mostly not in the {s['language']} script "
                     f"(e.g. in {', '.join(s['other_script_files'][:3])}); check --lang and the input")
    return "\n".join(lines)
