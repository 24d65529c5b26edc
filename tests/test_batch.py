"""Continuous batching (`langadapt.model.batch`) on a real (tiny, random) Llama: greedy answers decoded
together equal each decoded alone and `model.generate` alone, while sequences join and leave the batch;
a cancelled sequence leaves the others as they were; a seeded sample does not depend on its neighbours;
stop strings and stop ids hold per sequence."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from langadapt.model.batch import BatchDecoder, Sequence, generate_all
from langadapt.model.generate import Sampling, Utf8Mask, Utf8Table

PROMPTS = ["The cat", "대한민국은 민주공화국이다. 모든 권력은", "ཁྱོད་ཀྱི་གདོང་ནི", "Hello, how are you today? I am",
           "x", "你好，世界！今天天气很好", "One two three four five six seven eight nine ten", "Q: 2+2? A:"]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tok, Utf8Table(tok, width=model.config.vocab_size)


def _prompt_ids(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def _run(tiny, sequences, max_batch):
    model, tok, table = tiny
    return generate_all(BatchDecoder(model, tok, table), sequences, max_batch=max_batch)


def _greedy(ids, n=12, stop_ids=(), **kw):
    return Sequence(ids, Sampling(max_new_tokens=n, **kw), list(stop_ids))


def test_greedy_batched_equals_alone_equals_generate_while_sequences_join_and_leave(tiny):
    model, tok, table = tiny
    prompts = _prompt_ids(tok)
    lengths = [5, 17, 9, 12, 3, 14, 8, 11]  # different lengths: sequences leave at different steps
    alone = [_run(tiny, [_greedy(p, n)], 1)[0] for p, n in zip(prompts, lengths)]
    together = _run(tiny, [_greedy(p, n) for p, n in zip(prompts, lengths)], max_batch=3)
    for a, b, p, n in zip(alone, together, prompts, lengths):
        assert (b.text, b.completion_tokens, b.finish_reason) == (a.text, a.completion_tokens, a.finish_reason)
        ids = torch.tensor([p])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, logits_processor=[Utf8Mask(table)])
        expected = tok.decode(out[0, len(p):], skip_special_tokens=True)
        assert a.completion_tokens == n and a.text == expected.rstrip("\ufffd")  # a character cut at the end: dropped
    assert len({r.text for r in together}) == len(PROMPTS)  # the answers differ: a real test of the rows


def test_repetition_penalty_per_sequence_matches_generate(tiny):
    model, tok, table = tiny
    prompts = _prompt_ids(tok)[:4]
    together = _run(tiny, [_greedy(p, 10, repetition_penalty=1.0 + 0.3 * (i % 2)) for i, p in enumerate(prompts)], 4)
    for i, (p, result) in enumerate(zip(prompts, together)):
        ids = torch.tensor([p])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                 repetition_penalty=1.0 + 0.3 * (i % 2), eos_token_id=None, pad_token_id=0,
                                 logits_processor=[Utf8Mask(table)])
        assert result.text == tok.decode(out[0, len(p):], skip_special_tokens=True).rstrip("\ufffd")


def test_cancelling_one_sequence_does_not_disturb_the_others(tiny):
    prompts = _prompt_ids(tiny[1])[:4]
    reference = _run(tiny, [_greedy(p, 16) for p in prompts], 4)
    pieces: list[str] = []
    victim = Sequence(prompts[1], Sampling(max_new_tokens=16), [], on_text=pieces.append,
                      cancelled=lambda: len(pieces) >= 3)
    sequences = [_greedy(prompts[0], 16), victim, _greedy(prompts[2], 16), _greedy(prompts[3], 16)]
    results = _run(tiny, sequences, 4)
    assert results[1].finish_reason == "cancelled" and results[1].completion_tokens < 16
    assert [r.text for i, r in enumerate(results) if i != 1] == [r.text for i, r in enumerate(reference) if i != 1]


def test_a_seeded_sample_does_not_depend_on_its_neighbours(tiny):
    prompts = _prompt_ids(tiny[1])

    def sampled(seed):
        return Sequence(prompts[0], Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=seed), [])

    alone = _run(tiny, [sampled(7)], 1)[0].text
    crowd = _run(tiny, [_greedy(p, 6) for p in prompts[1:5]] + [sampled(7), sampled(8)], 6)
    assert crowd[4].text == alone != crowd[5].text


def test_stop_ids_and_stop_strings_hold_per_sequence(tiny):
    p = _prompt_ids(tiny[1])[0]
    free = _greedy(p, 12)
    _run(tiny, [free], 1)
    stop_id = free.tokens[3]
    stop_text = free.result.text[3:6]
    results = _run(tiny, [_greedy(p, 12), _greedy(p, 12, stop=[stop_text]), _greedy(p, 12, stop_ids=[stop_id])], 3)
    assert results[0].text == free.result.text and results[0].finish_reason == "length"
    assert results[1].text == free.result.text[:free.result.text.find(stop_text)]
    assert results[1].finish_reason == "stop" and results[1].completion_tokens < 12
    assert results[2].completion_tokens == free.tokens.index(stop_id) + 1 and results[2].finish_reason == "stop"


def test_a_shared_prefix_runs_once_is_kept_and_gives_the_same_answers(tiny):
    model, tok, table = tiny
    system = "You are a helpful assistant. Answer in one short sentence, please. "
    prompts = [tok(system + q, add_special_tokens=False)["input_ids"] for q in ("Why?", "대한민국은", "Hello there")]
    shared = len(tok(system, add_special_tokens=False)["input_ids"]) - 1
    tokens_run: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args, kw: tokens_run.append(kw["input_ids"].numel()),
                                           with_kwargs=True)
    try:
        decoder = BatchDecoder(model, tok, table)
        first = generate_all(decoder, [_greedy(p, 6) for p in prompts[:2]])
        prefill_tokens = sum(tokens_run[:2])  # the prefix once, then each prompt's own tokens
        later = generate_all(decoder, [_greedy(prompts[2], 6)])  # the kept prefix is reused
    finally:
        hook.remove()
    assert prefill_tokens < sum(map(len, prompts[:2])) - shared + 2
    assert decoder.prefix is not None and len(decoder.prefix[0]) >= shared
    for p, result in zip(prompts, first + later):
        ids = torch.tensor([p])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, logits_processor=[Utf8Mask(table)])
        assert result.text == tok.decode(out[0, len(p):], skip_special_tokens=True).rstrip("\ufffd")
