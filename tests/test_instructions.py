"""Instruction data: formats, multi-turn, validation, error positions, skip_bad, real data."""

from __future__ import annotations

import gzip
import json

import pytest

from langadapt.errors import LangadaptError
from langadapt.train.instructions import (FORMATS, InstructionStats, detect_format, read_conversations,
                                          record_to_messages)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def write_array(path, records):
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- formats

SINGLE_TURN = [
    ("alpaca", {"instruction": "Translate.", "input": "你好", "output": "Hello"}, [U("Translate.\n你好"), A("Hello")]),
    ("alpaca", {"instruction": "Say hi.", "input": "", "output": " hi \n"}, [U("Say hi."), A(" hi \n")]),
    ("firefly", {"kind": "Translation", "input": "翻译：你好", "target": "Hello"}, [U("翻译：你好"), A("Hello")]),
    ("prompt", {"input": "问题？\n答案：", "target": "是的", "answer_choices": ["是的", "不是"], "type": "nli"},
     [U("问题？\n答案："), A("是的")]),
    ("qa", {"id": None, "title": "t", "context": "C.", "question": "Q?", "answer": "A."}, [U("C.\nQ?"), A("A.")]),
]


@pytest.mark.parametrize("fmt,record,expected", SINGLE_TURN)
@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_single_turn_formats_in_both_layouts(tmp_path, fmt, record, expected, layout):
    other = dict(record)
    write = write_array if layout == "array" else write_jsonl
    path = write(tmp_path / f"data.{'json' if layout == 'array' else 'jsonl'}", [record, other])
    convs, stats = read_conversations(path)
    assert convs == [expected, expected]
    assert (stats.files, stats.records, stats.conversations, stats.skipped) == (1, 2, 2, 0)
    assert stats.formats == {str(path): fmt}
    assert detect_format(record) == fmt


def test_messages_multi_turn(tmp_path):
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Bye!", "weight": 1}]}
    convs, stats = read_conversations(write_jsonl(tmp_path / "m.jsonl", [rec]))
    assert convs == [[S("Be brief."), U("Hi"), A("Hello"), U("Bye"), A("Bye!")]]
    assert stats.formats[str(tmp_path / "m.jsonl")] == "messages"


def test_sharegpt_multi_turn_role_mapping(tmp_path):
    rec = {"id": "x", "conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q1"},
                                        {"from": "gpt", "value": "a1"}, {"from": "user", "value": "q2"},
                                        {"from": "chatgpt", "value": "a2"}]}
    convs, _ = read_conversations(write_array(tmp_path / "s.json", [rec]))
    assert convs == [[S("sys"), U("q1"), A("a1"), U("q2"), A("a2")]]


def test_firefly_conversation_with_system(tmp_path):
    recs = [{"conversation_id": 1, "category": "Brainstorming", "system": "You are Firefly.",
             "conversation": [{"human": "q1", "assistant": "a1"}, {"human": "q2", "assistant": "a2"}]},
            {"conversation": [{"human": "q", "assistant": "a"}]}]
    convs, stats = read_conversations(write_jsonl(tmp_path / "f.jsonl", recs))
    assert convs == [[S("You are Firefly."), U("q1"), A("a1"), U("q2"), A("a2")], [U("q"), A("a")]]
    assert list(stats.formats.values()) == ["firefly-conversation"]


def test_alpaca_history_and_system():
    rec = {"instruction": "And 3+3?", "input": "", "output": "6", "system": "Math tutor.",
           "history": [["1+1?", "2"], ["2+2?", "4"]]}
    assert record_to_messages(rec, "alpaca") == [S("Math tutor."), U("1+1?"), A("2"), U("2+2?"), A("4"),
                                                 U("And 3+3?"), A("6")]


def test_detect_format_order_and_none():
    assert detect_format({"kind": "k", "input": "i", "target": "t"}) == "firefly"
    assert detect_format({"input": "i", "target": "t"}) == "prompt"
    assert detect_format({"messages": [], "instruction": "i", "output": "o"}) == "messages"
    assert detect_format({"text": "plain"}) is None
    assert list(FORMATS) == ["messages", "sharegpt", "firefly-conversation", "alpaca", "firefly", "prompt", "qa"]


def test_gz_and_directory_with_other_files(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"input": "i", "target": "t"}) + "\n")
    (tmp_path / "README.txt").write_text("not data\n")
    write_array(tmp_path / "b.json", [{"instruction": "x", "output": "y"}])
    convs, stats = read_conversations(tmp_path)
    assert convs == [[U("i"), A("t")], [U("x"), A("y")]]
    assert stats.files == 2
    assert sorted(stats.formats.values()) == ["alpaca", "prompt"]


def test_json_suffix_holding_json_lines_and_blank_lines(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('\n{"input": "a", "target": "b"}\n\n{"input": "c", "target": "d"}\n', encoding="utf-8")
    convs, stats = read_conversations(path)
    assert convs == [[U("a"), A("b")], [U("c"), A("d")]]
    assert stats.records == 2


def test_forced_format(tmp_path):
    # detected as firefly (it has "kind"), forced as prompt
    path = write_jsonl(tmp_path / "f.jsonl", [{"kind": "k", "input": "i", "target": "t"}])
    convs, stats = read_conversations(path, fmt="prompt")
    assert convs == [[U("i"), A("t")]]
    assert stats.formats == {str(path): "prompt"}


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("record,fmt,reason", [
    ({"instruction": "i", "output": "  \n"}, "alpaca", "empty answer in 'output'"),
    ({"input": "i", "target": ""}, "prompt", "empty answer in 'target'"),
    ({"context": "c", "question": "q", "answer": " "}, "qa", "empty answer in 'answer'"),
    ({"instruction": "i", "output": 3}, "alpaca", "field 'output' must be a string, got int"),
    ({"instruction": "i"}, "alpaca", "missing field 'output'"),
    ({"input": "i", "target": "t"}, "firefly", "missing field 'kind'"),
    ({"messages": "hi"}, "messages", "field 'messages' must be a list, got str"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages",
     "message 1: unknown 'role' 'bot' (allowed: system, user, assistant)"),
    ({"conversations": [{"from": "bing", "value": "x"}]}, "sharegpt",
     "message 1: unknown 'from' 'bing' (allowed: human, user, gpt, assistant, chatgpt, system)"),
    ({"messages": [U("a"), {"role": "assistant", "content": None}]}, "messages",
     "message 2: field 'content' must be a string, got NoneType"),
    ({"messages": [U("a"), A("b"), U("c"), U("d"), A("e")]}, "messages", "message 4: two user turns in a row"),
    ({"messages": [U("a")]}, "messages", "conversation has no assistant turn"),
    ({"messages": [S("s"), A("b")]}, "messages", "message 2: the first non-system message must be a user turn, got assistant"),
    ({"messages": [U("a"), S("s"), A("b")]}, "messages", "message 2: system message not first"),
    ({"messages": [U("a"), A(" ")]}, "messages", "message 2: empty answer in 'content'"),
    ({"conversation": [{"human": "q"}]}, "firefly-conversation", "turn 1: missing field 'assistant'"),
    ({"instruction": "i", "output": "o", "history": [["q"]]}, "alpaca",
     "history item 1 must be a [query, answer] pair of strings, got ['q']"),
])
def test_bad_records_have_precise_reasons(record, fmt, reason):
    with pytest.raises(ValueError) as e:
        record_to_messages(record, fmt)
    assert str(e.value) == reason


def test_error_names_file_and_line_in_pretty_printed_array(tmp_path):
    recs = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "", "output": ""},
            {"instruction": "e", "input": "", "output": "f"}]
    path = write_array(tmp_path / "alpaca.json", recs)  # records start at lines 2, 7, 12
    assert path.read_text().splitlines()[6] == "  {"
    with pytest.raises(LangadaptError) as e:
        read_conversations(path)
    assert str(e.value) == f"{path}:7: empty answer in 'output'"


def test_error_line_in_jsonl_and_invalid_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n\n{"input": "c", "target": 5}\n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"d\.jsonl:3: field 'target' must be a string, got int$"):
        read_conversations(path)
    path.write_text('{"input": "a", "target": "b"}\n{"input": "c", \n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"d\.jsonl:2: invalid JSON \(Expecting property name"):
        read_conversations(path)


def test_invalid_json_in_array_names_its_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"input": "a", "target": "b"},\n  {"input": "c" "target": "d"}\n]\n', encoding="utf-8")
    with pytest.raises(LangadaptError, match=r"a\.json:3: invalid JSON \(Expecting ',' delimiter"):
        read_conversations(path)


def test_record_of_another_format_in_a_file(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"instruction": "i", "output": "o"}, {"input": "x", "target": "y"}])
    with pytest.raises(LangadaptError) as e:
        read_conversations(path)
    assert str(e.value) == (f"{path}:2: record does not look like alpaca (expected keys {FORMATS['alpaca']}); "
                            "got keys ['input', 'target']")


def test_unknown_first_record_lists_every_format(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    with pytest.raises(LangadaptError) as e:
        read_conversations(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:1: record matches no instruction format (got keys ['text'])")
    assert "\n" not in msg
    for name, keys in FORMATS.items():
        assert f"{name}: {keys}" in msg


def test_unknown_fmt_argument_and_missing_files(tmp_path):
    with pytest.raises(LangadaptError, match="unknown instruction format 'chatml'; choose auto or one of: "
                                             "messages, sharegpt, firefly-conversation, alpaca, firefly, prompt, qa"):
        read_conversations(tmp_path, fmt="chatml")
    with pytest.raises(LangadaptError, match="no such file"):
        read_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("x\n")
    with pytest.raises(LangadaptError, match="no instruction files found"):
        read_conversations(tmp_path)
    with pytest.raises(LangadaptError, match="not an instruction file"):
        read_conversations(tmp_path / "notes.txt")


def test_skip_bad_counts_and_keeps_first_five_reasons(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = ['{"input": "q0", "target": "a0"}']
    lines += ['{"input": "q", "target": ""}'] * 6 + ["{not json"]
    lines += ['{"input": "q9", "target": "a9"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    convs, stats = read_conversations(path, skip_bad=True)
    assert convs == [[U("q0"), A("a0")], [U("q9"), A("a9")]]
    assert (stats.records, stats.conversations, stats.skipped) == (9, 2, 7)
    assert stats.skipped_examples == [f"{path}:{n}: empty answer in 'target'" for n in range(2, 7)]


def test_skip_bad_file_without_good_record_still_raises(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"input": "q", "target": " "}])
    with pytest.raises(LangadaptError, match=r"bad\.jsonl: no usable instruction record \(all 1 records are bad"):
        read_conversations(path, skip_bad=True)
    empty = tmp_path / "empty.json"
    empty.write_text("[]\n")
    with pytest.raises(LangadaptError, match="empty file or empty list"):
        read_conversations(empty)


def test_stats_defaults():
    s = InstructionStats()
    assert (s.files, s.records, s.conversations, s.skipped, s.skipped_examples, s.formats) == (0, 0, 0, 0, [], {})


# ----------------------------------------------------------------------------- real data

def test_real_alpaca_zh(shared_data):
    folder = shared_data / "zh/instructions-alpaca-zh/翻译后的中文数据"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    files = sorted(folder.glob("*.json"))
    records = [r for f in files for r in json.loads(f.read_text(encoding="utf-8"))]
    good = sum(1 for r in records if r["output"].strip())
    with pytest.raises(LangadaptError, match=r"\.json:\d+: empty answer in 'output'"):
        read_conversations(str(folder / "*.json"))
    convs, stats = read_conversations(str(folder / "*.json"), skip_bad=True, fmt="alpaca")
    assert stats.files == len(files) == 2
    assert stats.records == len(records)
    assert stats.conversations == len(convs) == good
    assert stats.skipped == len(records) - good
    assert set(stats.formats.values()) == {"alpaca"}
    assert convs[0][0] == U("给出三个保持健康的提示。")
    assert [m["role"] for m in convs[0]] == ["user", "assistant"]


def test_real_pclue_jsonl_named_json(shared_data):
    path = shared_data / "zh/prompts-pclue/pCLUE_train_9.json"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    convs, stats = read_conversations(path)
    assert stats.formats == {str(path): "prompt"}
    assert stats.records == stats.conversations == len(convs) == len(lines)
    first = json.loads(lines[0])
    assert convs[0] == [U(first["input"]), A(first["target"])]


def test_real_tibetanqa(shared_data):
    path = shared_data / "bo/qa-tibetanqa/tibetanqa-dev.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    convs, stats = read_conversations(path)
    assert stats.formats == {str(path): "qa"}
    assert len(convs) == stats.records == 1000
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert convs[0] == [U(first["context"] + "\n" + first["question"]), A(first["answer"])]
