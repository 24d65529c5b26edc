"""Shared test fixtures: the real data folder (skipped when absent) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The seed sentence of the Tibetan-Llama2 tokenizer table: 16 syllables.
TIBETAN_SEED_SENTENCE = "ཁྱོད་ཀྱི་གདོང་ནི་པད་མ་བཞིན།།མིག་དག་ཨུཏྤལ་སྔོན་པོ་བཞིན།"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` next to the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


# ----------------------------------------------------------------------------- tiny models

# A few KB of English and Korean text to train the tiny tokenizer on.
TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Tokenizers split text into pieces; a byte-level BPE never needs an unknown token.",
    "What is the capital of France? The capital of France is Paris.",
    "Continued pretraining teaches the model the new language, and instruction tuning teaches it to answer.",
    "New tokens get embeddings initialised from the mean of their old pieces.",
    "대한민국은 민주공화국이다.",
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 법 앞에 평등하다.",
    "안녕하세요. 오늘 날씨가 좋네요.",
    "한국어를 배우는 것은 재미있습니다.",
    "프랑스의 수도는 파리입니다.",
    "Numbers like 2024, 3.14 and 1,000 appear in text too.",
]

# The ChatML template SmolLM2 uses, without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2


def _build_tiny_tokenizer():
    """A byte-level BPE (vocab 512) trained on TINY_CORPUS, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TINY_CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """An HF tokenizer dir: byte-level BPE, vocab 512, bos/eos/pad, ChatML chat template."""
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    _build_tiny_tokenizer().save_pretrained(out)
    return out


def _save_tiny_llama(out: Path, tokenizer_dir: Path, tied: bool) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A random LlamaForCausalLM (hidden 64, 2 layers, 4 heads, untied) saved with the tiny tokenizer."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir, tied=False)


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """As `tiny_llama_dir`, with tied input/output embeddings."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-tied"), tiny_tokenizer_dir, tied=True)


def _permute_for_gguf(w, n_head: int):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py `permute`); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny Llama at `model_dir` as an F32 llama GGUF (weights, tokenizer, chat template)
    with the `gguf` package, laid out as llama.cpp's converter lays it out."""
    import json

    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    w = gguf.GGUFWriter(str(out), arch="llama")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    w.add_rope_dimension_count(config["hidden_size"] // n_head)
    w.add_vocab_size(config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_chat_template(CHATML_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in weights.items():
        if name in names:
            w.add_tensor(names[name], tensor)
            continue
        _, _, layer, *rest = name.split(".")
        part = ".".join(rest[:-1])
        if part == "self_attn.q_proj":
            tensor = _permute_for_gguf(tensor, n_head)
        elif part == "self_attn.k_proj":
            tensor = _permute_for_gguf(tensor, n_kv)
        w.add_tensor(f"blk.{layer}.{parts[part]}.weight", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """`tiny_llama_dir` written as an F32 llama GGUF file."""
    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.F32.gguf")
