"""Instruction-tuning data: read files of many formats, normalise each record to a conversation.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}`:
an optional system message first, then user and assistant turns alternating, with at least one
(non-empty) assistant turn. Content is kept exactly as written.

Files (`.json`, `.jsonl`, optionally `.gz`) hold a JSON list of records or JSON Lines (decided
by the first non-blank character, so a `.json` file of JSON Lines works). The format is detected
per file from its first record (or forced) and every record of the file must have its keys.
Errors name the file and the line where the record starts.
"""

from __future__ import annotations

import gzip
import itertools
import os
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from langadapt.corpus.read import expand_paths
from langadapt.errors import LangadaptError

# Format name -> its keys; checked in this order by `detect_format`.
FORMATS: dict[str, str] = {
    "messages": '"messages": list of {"role": system|user|assistant, "content"}',
    "sharegpt": '"conversations": list of {"from": human|user|gpt|assistant|chatgpt|system, "value"}',
    "firefly-conversation": '"conversation": list of {"human", "assistant"}; optional "system"',
    "alpaca": '"instruction", "output"; optional "input", "system", "history" (list of [query, answer])',
    "firefly": '"kind", "input", "target"',
    "prompt": '"input", "target" (other keys ignored)',
    "qa": '"context", "question", "answer" (other keys ignored)',
}
_REQUIRED = {"messages": ("messages",), "sharegpt": ("conversations",), "firefly-conversation": ("conversation",),
             "alpaca": ("instruction", "output"), "firefly": ("kind", "input", "target"),
             "prompt": ("input", "target"), "qa": ("context", "question", "answer")}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")
_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


@dataclass
class InstructionStats:
    """What `read_conversations` read: counts, the first skipped reasons, each file's format."""

    files: int = 0
    records: int = 0          # records read (good + bad)
    conversations: int = 0    # records kept
    skipped: int = 0          # bad records skipped (only with skip_bad)
    skipped_examples: list[str] = field(default_factory=list)  # first 5, "file:line: reason"
    formats: dict[str, str] = field(default_factory=dict)      # file path -> format
    tasks: list[str | None] = field(default_factory=list)      # per conversation: its record's "task" (or "kind")


def detect_format(record: dict) -> str | None:
    """The first format (in FORMATS order) whose required keys `record` has; None if none."""
    if not isinstance(record, dict):
        return None
    return next((name for name, keys in _REQUIRED.items() if all(k in record for k in keys)), None)


def _text(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _answer(record: dict, key: str) -> str:
    value = _text(record, key)
    if not value.strip():
        raise ValueError(f"empty answer in {key!r}")
    return value


def _items(record: dict, key: str, what: str) -> list[dict]:
    """The list at `key`, checked to hold JSON objects."""
    items = record.get(key)
    if key not in record:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(items, list):
        raise ValueError(f"field {key!r} must be a list, got {type(items).__name__}")
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ValueError(f"{what} {i} of {key!r} must be an object, got {type(item).__name__}")
    return items


def _turns(items: list[dict], role_key: str, content_key: str, roles: dict[str, str]) -> list[dict]:
    messages = []
    for i, item in enumerate(items, 1):
        role = item.get(role_key)
        if role not in roles:
            raise ValueError(f"message {i}: unknown {role_key!r} {role!r} (allowed: {', '.join(roles)})")
        try:
            content = _text(item, content_key)
        except ValueError as e:
            raise ValueError(f"message {i}: {e}") from None
        messages.append({"role": roles[role], "content": content})
    return messages


def _check(messages: list[dict], answer_key: str) -> list[dict]:
    """Validate the shape of a conversation (see the module docstring); return it."""
    previous = None
    for i, m in enumerate(messages, 1):
        role = m["role"]
        if role == "system" and i != 1:
            raise ValueError(f"message {i}: system message not first")
        if previous in (None, "system") and role != "user" and role != "system":
            raise ValueError(f"message {i}: the first non-system message must be a user turn, got {role}")
        if role == previous:
            raise ValueError(f"message {i}: two {role} turns in a row")
        if role == "assistant" and not m["content"].strip():
            raise ValueError(f"message {i}: empty answer in {answer_key!r}")
        previous = role
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("conversation has no assistant turn")
    return messages


def record_to_messages(record: dict, fmt: str) -> list[dict]:
    """The conversation of one `record` in format `fmt`; raises ValueError(reason) when bad."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "messages":
        items = _items(record, "messages", "message")
        return _check(_turns(items, "role", "content", {r: r for r in _ROLES}), "content")
    if fmt == "sharegpt":
        items = _items(record, "conversations", "message")
        return _check(_turns(items, "from", "value", _SHAREGPT_ROLES), "value")
    if fmt == "firefly-conversation":
        system = _text(record, "system", required=False)
        messages = [{"role": "system", "content": system}] if system else []
        for i, turn in enumerate(_items(record, "conversation", "turn"), 1):
            try:
                messages += [{"role": "user", "content": _text(turn, "human")},
                             {"role": "assistant", "content": _text(turn, "assistant")}]
            except ValueError as e:
                raise ValueError(f"turn {i}: {e}") from None
        return _check(messages, "assistant")
    if fmt == "alpaca":
        instruction, output = _text(record, "instruction"), _answer(record, "output")
        extra, system = _text(record, "input", required=False), _text(record, "system", required=False)
        history = record.get("history") or []
        if not isinstance(history, list):
            raise ValueError(f"field 'history' must be a list of [query, answer] pairs, got {type(history).__name__}")
        messages = [{"role": "system", "content": system}] if system else []
        for i, pair in enumerate(history, 1):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise ValueError(f"history item {i} must be a [query, answer] pair of strings, got {pair!r:.80}")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        user = instruction + "\n" + extra if extra else instruction
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        return _check(messages, "history")
    if fmt in ("firefly", "prompt"):
        if fmt == "firefly":
            _text(record, "kind")
        return [{"role": "user", "content": _text(record, "input")},
                {"role": "assistant", "content": _answer(record, "target")}]
    if fmt == "qa":
        user = _text(record, "context") + "\n" + _text(record, "question")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _answer(record, "answer")}]
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


# ----------------------------------------------------------------------------- files

def _json_files(paths) -> list[Path]:
    """The .json/.jsonl(.gz) files named by `paths`; other files in directories/globs are skipped."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: dict[Path, Path] = {}  # resolved -> as named, without duplicates
    for item in items:
        wanted = [p for p in expand_paths(item) if p.name.lower().endswith(_SUFFIXES)]
        if not wanted:
            what = "not an instruction file" if Path(item).is_file() else "no instruction files found"
            raise LangadaptError(f"{item}: {what} (expected {', '.join(_SUFFIXES)})")
        files.update((p.resolve(), p) for p in wanted if p.resolve() not in files)
    if not files:
        raise LangadaptError("no instruction files given")
    return list(files.values())


def _array(path: Path, text: str) -> Iterator[tuple[int, object, None]]:
    """(line where it starts, record, None) for each element of the JSON list in `text`."""
    decoder = json.JSONDecoder()
    pos, line, counted = text.index("[") + 1, 1, 0

    def skip_ws(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if text[pos:pos + 1] == "]":
        pos += 1
    else:
        while True:
            line, counted = line + text.count("\n", counted, pos), pos
            try:
                record, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise LangadaptError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield line, record, None
            pos = skip_ws(pos)
            sep = text[pos:pos + 1]
            pos = skip_ws(pos + 1)
            if sep == "]":
                break
            if sep != ",":
                where = line + text.count("\n", counted, pos)
                raise LangadaptError(f"{path}:{where}: invalid JSON list: expected ',' or ']' after a record")
    if skip_ws(pos) < len(text):
        raise LangadaptError(f"{path}:{line + text.count(chr(10), counted, pos)}: unexpected data after the JSON list")


def _records(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """(line, record, None) per record of `path`, or (line, None, reason) for a bad JSON line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as fh:
        head = []
        for text in fh:  # blank lines and the first other one
            head.append(text)
            if text.strip():
                break
        if not head:
            return
        if head[-1].lstrip().startswith("["):
            yield from _array(path, "".join(head) + fh.read())
            return
        hint = "; a .json file must hold a JSON list or one JSON object per line" if path.suffix == ".json" else ""
        for lineno, text in enumerate(itertools.chain(head, fh), 1):
            if text.strip():
                try:
                    yield lineno, json.loads(text), None
                except json.JSONDecodeError as e:
                    yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno}){hint}"


def _convert(record, fmt: str) -> list[dict]:
    """`record_to_messages`, first checking that `record` has the keys of the file's format."""
    if isinstance(record, dict) and any(k not in record for k in _REQUIRED[fmt]):
        raise ValueError(f"record does not look like {fmt} (expected keys {FORMATS[fmt]}); got keys {list(record)}")
    return record_to_messages(record, fmt)


def read_conversations(paths, skip_bad: bool = False, fmt: str = "auto") -> tuple[list[list[dict]], InstructionStats]:
    """Read the instruction files named by `paths` (files, directories, globs) as conversations.

    `fmt` forces a format for every file ("auto": detect it per file from its first record).
    A bad record raises LangadaptError("file:line: reason"); with `skip_bad` it is skipped and
    counted instead, but a file without any good record still raises."""
    if fmt != "auto" and fmt not in FORMATS:
        raise LangadaptError(f"unknown instruction format {fmt!r}; choose auto or one of: {', '.join(FORMATS)}")
    stats = InstructionStats()
    conversations: list[list[dict]] = []
    for path in _json_files(paths):
        stats.files += 1
        file_fmt = None if fmt == "auto" else fmt
        good, bad = 0, []
        try:
            for line, record, reason in _records(path):
                stats.records += 1
                if reason is None and file_fmt is None:
                    file_fmt = detect_format(record)
                    if file_fmt is None:
                        got = f"got keys {list(record)}" if isinstance(record, dict) else f"got a {type(record).__name__}"
                        known = "; ".join(f"{name}: {keys}" for name, keys in FORMATS.items())
                        raise LangadaptError(f"{path}:{line}: record matches no instruction format ({got}); "
                                             f"expected one of - {known}")
                if reason is None:
                    try:
                        conversations.append(_convert(record, file_fmt))
                        task = record.get("task", record.get("kind"))
                        stats.tasks.append(None if task is None else str(task))
                        good += 1
                        continue
                    except ValueError as e:
                        reason = str(e)
                if not skip_bad:
                    raise LangadaptError(f"{path}:{line}: {reason}")
                bad.append(f"{path}:{line}: {reason}")
        except UnicodeDecodeError as e:
            raise LangadaptError(f"{path}: invalid UTF-8 ({e.reason}); instruction files must be UTF-8") from None
        except (OSError, EOFError) as e:
            raise LangadaptError(f"{path}: cannot read ({e})") from None
        stats.formats[str(path)] = file_fmt or "unknown"
        stats.conversations += good
        stats.skipped += len(bad)
        stats.skipped_examples += bad[:5 - len(stats.skipped_examples)]
        if not good:
            detail = f"all {len(bad)} records are bad, first: {bad[0]}" if bad else "empty file or empty list"
            raise LangadaptError(f"{path}: no usable instruction record ({detail})")
    return conversations, stats
