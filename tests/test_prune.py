"""`langadapt tokenizer prune`: keep only the tokens a corpus needs, with the same token strings on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langadapt.cli import main
from langadapt.tokenizer.prune import bpe_symbols

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "今天天气很好，我们去公园散步吧。",
    "这家酒店的服务非常好，房间也很干净。",
    "Tokenizers split text into pieces; pieces become ids.",
    "我喜欢学习新的语言，也喜欢读书。",
] * 20

KEPT_CORPUS = [  # Chinese plus a little English: the kept languages
    "今天天气很好，我们去公园散步吧。",
    "这家酒店的服务非常好。",
    "我喜欢读书。 The lazy dog.",
    "房间也很干净，我喜欢。",
]


def _encode_tokens(tok, texts):
    return [e.tokens for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def tiny_bpe_dir(tmp_path_factory) -> Path:
    """A tiny byte-level BPE (GPT-2 style pipeline) with three specials and a chat template, saved as an HF dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TRAIN_TEXT, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("tinybpe") / "tok"
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def pruned_tiny(tiny_bpe_dir, tmp_path_factory):
    """The tiny BPE pruned to KEPT_CORPUS (min-count 1 and 2)."""
    root = tmp_path_factory.mktemp("pruned-tiny")
    corpus = root / "kept.txt"
    corpus.write_text("\n".join(KEPT_CORPUS) + "\n", encoding="utf-8")
    outs = {}
    for k in (1, 2):
        outs[k] = root / f"k{k}"
        assert main(["tokenizer", "prune", "--base", str(tiny_bpe_dir), "--corpus", str(corpus), "--lang", "zh",
                     "--out", str(outs[k]), "--min-count", str(k)]) == 0
    return outs


def test_bpe_symbols_follows_merge_ranks():
    ranks = {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}
    assert bpe_symbols("abc", ranks) == {"a", "b", "c", "ab", "abc"}
    # "bc" ranks first here, so "abc" is built through "bc"
    assert bpe_symbols("abc", {("b", "c"): 0, ("a", "bc"): 1, ("a", "b"): 2}) == {"a", "b", "c", "bc", "abc"}


def test_prune_tiny_byte_level_bpe(tiny_bpe_dir, pruned_tiny):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(tiny_bpe_dir))
    pruned = AutoTokenizer.from_pretrained(str(pruned_tiny[1]))
    id_map = json.loads((pruned_tiny[1] / "id_map.json").read_text())
    report = json.loads((pruned_tiny[1] / "prune_report.json").read_text())

    # same token strings on the corpus; ids differ exactly by the map
    assert _encode_tokens(pruned, KEPT_CORPUS) == _encode_tokens(base, KEPT_CORPUS)
    for text in KEPT_CORPUS:
        old_ids = base(text, add_special_tokens=False)["input_ids"]
        assert pruned(text, add_special_tokens=False)["input_ids"] == [id_map["old_to_new"][str(i)] for i in old_ids]

    # the map: sizes, old-id order, same strings
    assert id_map["old_vocab_size"] == len(base) and id_map["new_vocab_size"] == len(pruned)
    assert id_map["new_to_old"] == sorted(id_map["new_to_old"])
    old_vocab = {i: t for t, i in base.get_vocab().items()}
    new_vocab = {i: t for t, i in pruned.get_vocab().items()}
    assert sorted(new_vocab) == list(range(len(pruned)))
    for old, new in id_map["old_to_new"].items():
        assert new_vocab[new] == old_vocab[int(old)]

    # specials first (old ids 0..2 stay 0..2), chat template kept, all 256 byte symbols kept
    assert [pruned.convert_tokens_to_ids(s) for s in SPECIALS] == [0, 1, 2]
    assert (pruned.bos_token, pruned.eos_token, pruned.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert pruned.chat_template == CHAT_TEMPLATE
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(pruned.get_vocab())

    # the report adds up
    kept, dropped = report["kept"], report["dropped"]
    assert sum(kept.values()) == report["new_vocab_size"] == len(pruned)
    assert sum(kept.values()) + sum(dropped.values()) == len(base)
    assert kept["special"] == 3 and kept["byte"] == 256 and dropped["below_min_count"] == 0
    assert json.loads((pruned_tiny[1] / "adaptation.json").read_text())["step"] == "tokenizer.prune"


def test_min_count_drops_rare_tokens_but_text_round_trips(tiny_bpe_dir, pruned_tiny):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(tiny_bpe_dir))
    k1 = AutoTokenizer.from_pretrained(str(pruned_tiny[1]))
    k2 = AutoTokenizer.from_pretrained(str(pruned_tiny[2]))
    report = json.loads((pruned_tiny[2] / "prune_report.json").read_text())
    assert len(k2) < len(k1) < len(base)
    assert report["dropped"]["below_min_count"] > 0
    # "The lazy dog." occurs once: its tokens are gone at min-count 2, but the text still decodes back
    for text in KEPT_CORPUS + ["The quick brown fox jumps over the lazy dog.", "Ünïcödé ✓ 🙂 བོད་"]:
        ids = k2(text, add_special_tokens=False)["input_ids"]
        assert k2.decode(ids) == text
    assert k2.tokenize("The lazy dog.") != base.tokenize("The lazy dog.")


@pytest.fixture(scope="module")
def llama2_pruned(shared_data, tmp_path_factory):
    """Llama-2's SentencePiece tokenizer pruned to 40 Tibetan news articles."""
    from langadapt.corpus import iter_texts
    from langadapt.lang import get_profile

    files = sorted((shared_data / "bo" / "news-tibettimes-2016").glob("*.txt"))[:40]
    out = tmp_path_factory.mktemp("llama2-pruned") / "tok"
    assert main(["tokenizer", "prune", "--base", str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"),
                 "--corpus", *map(str, files), "--lang", "bo", "--out", str(out)]) == 0
    texts = list(iter_texts(files, profile=get_profile("bo")))
    return out, texts


def test_prune_llama2_on_tibetan(shared_data, llama2_pruned):
    from transformers import AutoTokenizer

    from langadapt.tokenizer.load import load_tokenizer

    out, texts = llama2_pruned
    base = load_tokenizer(shared_data / "tokenizers" / "llama2" / "tokenizer.model")
    pruned = AutoTokenizer.from_pretrained(str(out))
    id_map = json.loads((out / "id_map.json").read_text())
    report = json.loads((out / "prune_report.json").read_text())

    assert _encode_tokens(pruned, texts) == _encode_tokens(base, texts)
    assert id_map["old_vocab_size"] == 32000
    assert report["kept"]["byte"] == 256 and report["kept"]["special"] == 3
    assert len(pruned) == id_map["new_vocab_size"] == sum(report["kept"].values())
    assert len(pruned) < 2000  # Tibetan news needs a small share of Llama-2's 32,000 tokens
    # the 15 Tibetan letters Llama-2 has are all used by Tibetan news, so all kept
    assert {t for t in base.get_vocab() if any("\u0f00" <= c <= "\u0fff" for c in t)} <= set(pruned.get_vocab())
    # <unk> <s> </s> keep ids 0 1 2; <0x00> was 3 and stays 3; BOS still added on encode
    assert [pruned.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<0x00>")] == [0, 1, 2, 3]
    ids = pruned(texts[0])["input_ids"]
    assert ids[0] == 1 and pruned.convert_ids_to_tokens(ids)[1:] == base.tokenize(texts[0])
    old_vocab = {i: t for t, i in base.get_vocab().items()}
    new_vocab = {i: t for t, i in pruned.get_vocab().items()}
    assert all(new_vocab[n] == old_vocab[int(o)] for o, n in id_map["old_to_new"].items())
    # text the corpus never had still round-trips (byte fallback)
    for text in ["Здравствуй, мир", "你好，世界", "The Dalai Lama spoke in Dharamsala."]:
        assert pruned.decode(pruned(text, add_special_tokens=False)["input_ids"]) == text


def _kept_alphabet(texts):
    return sorted({c for t in texts for c in t if "\u0f00" <= c <= "\u0fff"})


@pytest.fixture(scope="module")
def llama2_pair(shared_data, llama2_pruned):
    from transformers import AutoTokenizer

    from langadapt.tokenizer.load import load_tokenizer

    out, texts = llama2_pruned
    return (load_tokenizer(shared_data / "tokenizers" / "llama2" / "tokenizer.model"),
            AutoTokenizer.from_pretrained(str(out)), _kept_alphabet(texts))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_llama2_same_tokens_on_corpus_alphabet(llama2_pair, data):
    """Random Tibetan text from the corpus alphabet: pruned and original give identical token strings."""
    base, pruned, alphabet = llama2_pair
    text = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=60))
    assert pruned.tokenize(text) == base.tokenize(text)
    assert pruned.decode(pruned(text, add_special_tokens=False)["input_ids"]) == text


@pytest.fixture(scope="module")
def tiny_pair(tiny_bpe_dir, pruned_tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bpe_dir)), AutoTokenizer.from_pretrained(str(pruned_tiny[1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_tiny_bpe_exact_when_tokens_kept(tiny_pair, data):
    """Random text from the kept corpus alphabet: whenever every original token was kept, the pruned
    tokenizer gives the identical strings; and every text round-trips through the pruned tokenizer."""
    base, pruned = tiny_pair
    alphabet = sorted(set("".join(KEPT_CORPUS)))
    # whole words of the corpus joined by spaces and random characters of its alphabet
    words = sorted({w for t in KEPT_CORPUS for w in t.split()})
    text = data.draw(st.one_of(
        st.text(alphabet=alphabet, min_size=1, max_size=40),
        st.lists(st.sampled_from(words), min_size=1, max_size=6).map(" ".join)))
    original = base.tokenize(text)
    if set(original) <= set(pruned.get_vocab()):
        assert pruned.tokenize(text) == original
    assert pruned.decode(pruned(text, add_special_tokens=False)["input_ids"]) == text


def test_prune_bad_input(tmp_path, tiny_bpe_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenizer", "prune", "--base", str(tiny_bpe_dir), "--corpus", str(empty), "--lang", "zh",
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("langadapt: error:") and "no text records" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]  # nothing written, no temp dir left

    corpus = tmp_path / "c.txt"
    corpus.write_text("你好\n", encoding="utf-8")
    assert main(["tokenizer", "prune", "--base", str(tmp_path / "no-such-tokenizer"), "--corpus", str(corpus),
                 "--lang", "zh", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("langadapt: error:") and "no-such-tokenizer" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_prune_unigram_keeps_used_pieces(shared_data, tmp_path):
    """A SentencePiece Unigram model (Chinese-LLaMA v1's donor): the corpus gives the same pieces after pruning."""
    from transformers import AutoTokenizer

    from langadapt.corpus import iter_texts
    from langadapt.lang import get_profile
    from langadapt.tokenizer.load import load_tokenizer

    spm = shared_data / "tokenizers" / "chinese-llama-v1" / "chinese_sp.model"
    corpus = shared_data / "zh" / "instructions-belle" / "zh_seed_tasks.json"
    out = tmp_path / "tok"
    assert main(["tokenizer", "prune", "--base", str(spm), "--corpus", str(corpus), "--field", "instruction",
                 "--lang", "zh", "--out", str(out)]) == 0
    texts = list(iter_texts([corpus], profile=get_profile("zh"), field="instruction"))
    base, pruned = load_tokenizer(spm), AutoTokenizer.from_pretrained(str(out))
    report = json.loads((out / "prune_report.json").read_text())
    assert report["model_type"] == "Unigram" and report["old_vocab_size"] == 20000
    assert len(pruned) == report["new_vocab_size"] < 5000
    assert _encode_tokens(pruned, texts) == _encode_tokens(base, texts)
    assert pruned.convert_tokens_to_ids("<unk>") == 0


def test_prune_rejects_unsupported_models(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(str(tmp_path / "wl"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n", encoding="utf-8")
    assert main(["tokenizer", "prune", "--base", str(tmp_path / "wl"), "--corpus", str(corpus), "--lang", "en",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"langadapt: error: {tmp_path / 'wl'}: prune supports BPE and Unigram tokenizers, this one is 'WordLevel'"
    assert not (tmp_path / "out").exists()


def test_llama2_min_count_round_trips_through_byte_fallback(shared_data, llama2_pruned, tmp_path):
    """Dropping rare tokens (min-count 20): the corpus still decodes back exactly, via smaller pieces and bytes."""
    from transformers import AutoTokenizer

    _, texts = llama2_pruned
    files = sorted((shared_data / "bo" / "news-tibettimes-2016").glob("*.txt"))[:40]
    out = tmp_path / "k20"
    assert main(["tokenizer", "prune", "--base", str(shared_data / "tokenizers" / "llama2" / "tokenizer.model"),
                 "--corpus", *map(str, files), "--lang", "bo", "--min-count", "20", "--out", str(out)]) == 0
    pruned = AutoTokenizer.from_pretrained(str(out))
    report = json.loads((out / "prune_report.json").read_text())
    assert report["dropped"]["below_min_count"] > 100 and len(pruned) < 700
    encoded = pruned.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    assert [pruned.decode(e.ids) for e in encoded] == texts
