"""`langadapt chat`: history fitting, greedy one-shot equals a plain generate (under the UTF-8 mask),
streaming, piped stdin, the interactive loop's commands, --adapter equals the merged model, bad input,
Tibetan streamed a character at a time."""

from __future__ import annotations

import argparse
import io
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langadapt.cli import main
from langadapt.errors import LangadaptError
from langadapt.model.generate import Sampling, Utf8Mask, Utf8Table
from langadapt.tokenizer.templates import stop_token_ids
from langadapt.serve.chat import ChatSession, chat_loop, fit_history, sampling_of
from langadapt.serve.engine import Engine
from langadapt.tokenizer.templates import BUILTIN_TEMPLATES


def _msg(role, content):
    return {"role": role, "content": content}


def _count_chars(messages):
    """A token counter for the pure tests: one token per character of content."""
    return sum(len(m["content"]) for m in messages)


SYS = _msg("system", "S" * 5)
PAIRS = [_msg("user", "u1" * 5), _msg("assistant", "a1" * 5),   # 10 + 10
         _msg("user", "u2" * 5), _msg("assistant", "a2" * 5)]   # 10 + 10
CUR = _msg("user", "c" * 10)


def test_fit_history_keeps_everything_that_fits():
    msgs = [SYS, *PAIRS, CUR]
    assert fit_history(msgs, _count_chars, 55) == msgs


def test_fit_history_drops_oldest_pairs_first_and_keeps_system_and_current():
    assert fit_history([SYS, *PAIRS, CUR], _count_chars, 54) == [SYS, *PAIRS[2:], CUR]
    assert fit_history([SYS, *PAIRS, CUR], _count_chars, 35) == [SYS, *PAIRS[2:], CUR]
    assert fit_history([SYS, *PAIRS, CUR], _count_chars, 34) == [SYS, CUR]
    assert fit_history([*PAIRS, CUR], _count_chars, 30) == [*PAIRS[2:], CUR]


def test_fit_history_cuts_the_current_message_from_the_left():
    current = _msg("user", "0123456789")
    assert fit_history([SYS, *PAIRS, current], _count_chars, 9) == [SYS, _msg("user", "6789")]
    with pytest.raises(LangadaptError, match="system prompt alone"):
        fit_history([SYS, current], _count_chars, 4)


def test_sampling_of_the_chat_options():
    ns = argparse.Namespace(max_new_tokens=5, greedy=True, temperature=0.7, top_p=0.9, top_k=40,
                            repetition_penalty=1.1, seed=3)
    assert sampling_of(ns) == Sampling(max_new_tokens=5, temperature=0.0, seed=3)
    assert sampling_of(ns).generate_kwargs()["do_sample"] is False
    ns.greedy = False
    assert sampling_of(ns) == Sampling(max_new_tokens=5, temperature=0.7, top_p=0.9, top_k=40,
                                       repetition_penalty=1.1, seed=3)
    assert sampling_of(ns).generate_kwargs() == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7,
                                                 "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


# ----------------------------------------------------------------------------- with the tiny model

def _expected_greedy(model_dir, messages, max_new_tokens):
    """An independent greedy decode of the ChatML-rendered conversation (under the UTF-8 mask)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template(messages, chat_template=BUILTIN_TEMPLATES["chatml"], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                             logits_processor=[Utf8Mask(Utf8Table(tok, width=model.config.vocab_size))])
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def session(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    engine = Engine(model, tok, BUILTIN_TEMPLATES["chatml"], max_queue=1)
    yield ChatSession(engine, sampling=Sampling(max_new_tokens=8))
    engine.close()


def test_one_shot_prompt_equals_plain_greedy_generate(tiny_llama_dir, capsys):
    expected = _expected_greedy(tiny_llama_dir, [_msg("user", "hello")], 8)
    assert expected.strip()  # the random tiny model says something, so the comparison means something
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--prompt", "hello", "--greedy",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out == expected + "\n"


def test_system_prompt_is_rendered(tiny_llama_dir, capsys):
    expected = _expected_greedy(tiny_llama_dir, [_msg("system", "Be brief."), _msg("user", "hello")], 8)
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--system", "Be brief.",
                 "--prompt", "hello", "--greedy", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_piped_stdin_is_one_message(tiny_llama_dir, capsys, monkeypatch):
    expected = _expected_greedy(tiny_llama_dir, [_msg("user", "hello there")], 8)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n"))
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--greedy",
                 "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n"  # the answer only: no banner, no prompts


def test_streamed_chunks_make_the_reply_and_the_turn_joins_history(session):
    session.reset()
    chunks = []
    answer = session.reply("hello", on_token=chunks.append)
    assert len(chunks) >= 1 and "".join(chunks) == answer
    assert session.messages == [_msg("user", "hello"), _msg("assistant", answer)]


def test_stop_ids_include_the_templates_end_of_turn(session):
    tok = session.engine.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tok, BUILTIN_TEMPLATES["chatml"])
    assert stop_token_ids(tok, BUILTIN_TEMPLATES["alpaca"]) == [tok.eos_token_id]


def test_long_history_is_trimmed_to_the_context(session):
    session.reset()
    session.set_system("Be brief.")
    long = "The quick brown fox jumps over the lazy dog. " * 6   # ~ 60 tokens per message (context 256)
    for _ in range(6):
        session.reply(long)
        prompt = session.prompt_ids(session.messages[:-1])
        assert len(prompt) + 8 <= session.context
    assert session.messages[0] == _msg("system", "Be brief.")
    assert 3 <= len(session.messages) < 1 + 2 * 6   # some pairs were dropped, the last one kept
    assert session.messages[-2] == _msg("user", long)


def test_too_long_message_is_cut_from_the_left(session, capsys):
    session.reset()
    session.set_system(None)
    warnings = []
    session.warn = warnings.append
    text = "x " * 1000 + "END"
    session.reply(text)
    kept = session.messages[0]["content"]
    assert kept.endswith("END") and len(kept) < len(text)
    assert len(session.prompt_ids(session.messages[:1])) + 8 <= session.context
    assert warnings and "too long" in warnings[0]
    with pytest.raises(LangadaptError, match="empty"):
        session.reply("   ")


def test_interactive_loop_commands(session, capsys):
    session.set_system(None)
    lines = iter(["hi", "/system Be brief.", "hello", "/reset", "/help", "/exit", "never read"])
    lengths = []

    def read(prompt):
        assert prompt == "you> "
        lengths.append(len(session.messages))
        return next(lines)

    assert chat_loop(session, "banner", read=read) == 0
    # before: hi, /system, hello, /reset, /help, /exit
    assert lengths == [0, 2, 1, 3, 1, 1]
    assert session.messages == [_msg("system", "Be brief.")]
    out = capsys.readouterr().out
    assert out.startswith("banner\n") and out.count("model> ") == 2 and "commands: /reset" in out


def test_interactive_loop_ends_on_eof(session):
    def read(prompt):
        raise EOFError

    assert chat_loop(session, "banner", read=read) == 0


def test_ctrl_c_stops_the_answer_and_returns_to_the_prompt(session, capsys):
    session.set_system(None)
    lines = iter(["hi", "/exit"])
    calls = []

    def boom(text):
        calls.append(text)
        raise KeyboardInterrupt

    real = session.reply
    session.reply = lambda text, on_token=None: real(text, on_token=lambda s: boom(s))
    try:
        assert chat_loop(session, "banner", read=lambda p: next(lines)) == 0
    finally:
        del session.reply
    assert calls and session.messages[-2] == _msg("user", "hi")
    assert "[stopped]" in capsys.readouterr().out


def test_bad_input(tiny_llama_dir, capsys, monkeypatch):
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "nope", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "unknown template 'nope'" in err and err.count("\n") == 1
    assert main(["chat", "--model", str(tiny_llama_dir), "--prompt", "  "]) == 2
    assert "empty message" in capsys.readouterr().err
    assert main(["chat", "--prompt", "hi"]) == 2
    assert "--model" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["chat", "--model", str(tiny_llama_dir)]) == 2
    assert "empty message" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --adapter

@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    """A LoRA pretrain adapter of the tiny Llama (2 steps)."""
    from train_fixtures import make_corpus

    from langadapt.train.pretrain import pretrain
    from langadapt.train.recipe import recipe_from_dict

    root = tmp_path_factory.mktemp("chat-adapter")
    corpus = make_corpus(root / "train.txt", 40)
    recipe = recipe_from_dict({
        "model": str(tiny_llama_dir), "corpus": [str(corpus)], "out": str(root / "run"), "stage": "lora",
        "block_size": 32, "batch_size": 4, "max_steps": 2, "save_steps": 2, "logging_steps": 1, "lora_r": 4,
        "lora_alpha": 8, "learning_rate": 5e-2, "warmup_ratio": 0.0, "gradient_checkpointing": False,
        "progress": False, "cache_dir": str(root / "cache")}, "test")
    pretrain(recipe)
    return root / "run" / "adapter"


def test_adapter_chat_equals_merged_model_chat(adapter_dir, tiny_llama_dir, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter_dir), "--out", str(merged)]) == 0
    capsys.readouterr()
    opts = ["--template", "chatml", "--prompt", "hello", "--greedy", "--max-new-tokens", "8"]
    assert main(["chat", "--adapter", str(adapter_dir), *opts]) == 0   # base from adaptation.json
    with_adapter = capsys.readouterr().out
    assert main(["chat", "--model", str(merged), *opts]) == 0
    assert capsys.readouterr().out == with_adapter
    assert with_adapter == _expected_greedy(merged, [_msg("user", "hello")], 8) + "\n"
    assert with_adapter != _expected_greedy(tiny_llama_dir, [_msg("user", "hello")], 8) + "\n"


def test_terminal_session_through_the_cli(tiny_llama_dir, capsys, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty(""))
    lines = iter(["hello", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt: print(prompt, end="") or next(lines))
    expected = _expected_greedy(tiny_llama_dir, [_msg("user", "hello")], 8)
    assert main(["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--greedy",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("langadapt chat: ") and "/reset" in out.splitlines()[0]
    assert f"you> model> {expected}\nyou> " in out


def test_seed_makes_sampling_repeatable(tiny_llama_dir, capsys):
    opts = ["chat", "--model", str(tiny_llama_dir), "--template", "chatml", "--prompt", "hello",
            "--max-new-tokens", "12", "--temperature", "1.5", "--top-k", "0"]
    outs = []
    for seed in ("1", "1", "2"):
        assert main([*opts, "--seed", seed]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]


# ----------------------------------------------------------------------------- Tibetan, a character at a time

def test_chat_streams_tibetan_syllable_by_syllable(tiny_tokenizer_dir):
    """Tibetan has no spaces: the answer must still arrive a character at a time (transformers'
    TextIteratorStreamer held it back until a space or the end), with no broken characters."""
    from conftest import TIBETAN_SEED_SENTENCE
    from fake_lm import RuleLM, scripted_rule

    from langadapt.tokenizer.load import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    script = tok(TIBETAN_SEED_SENTENCE, add_special_tokens=False)["input_ids"]
    assert len(script) > 100  # byte tokens: the tiny tokenizer knows no Tibetan
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model = RuleLM(len(tok), scripted_rule(script, len(tok), then=eos), eos_token_id=eos, pad_token_id=eos)
    engine = Engine(model, tok, BUILTIN_TEMPLATES["chatml"], max_queue=1)
    try:
        session = ChatSession(engine, sampling=Sampling(max_new_tokens=400))
        chunks = []
        answer = session.reply("བཀྲ་ཤིས་བདེ་ལེགས།", on_token=chunks.append)
    finally:
        engine.close()
    assert answer == "".join(chunks) == TIBETAN_SEED_SENTENCE
    assert len(chunks) == len(TIBETAN_SEED_SENTENCE)  # one character per chunk
    assert "\ufffd" not in answer
