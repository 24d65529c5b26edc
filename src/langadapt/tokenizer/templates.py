"""Chat templates: the named templates of the seed recipes, written as Jinja chat templates.

A template is the same kind of Jinja string a tokenizer stores in `chat_template`, so one code
path renders them all (`tokenizer.apply_chat_template(..., chat_template=...)`), for training
(`train/sft_data.py` finds the answer spans from it) and for chat (`serve/chat.py`).

- `alpaca`: the Stanford Alpaca prompt ("Below is an instruction ... ### Instruction: ...
  ### Response:"), a newline after "### Response:", the answer, then EOS; later turns repeat
  the Instruction/Response pair; a system message replaces the preamble.
- `llama2-chat`: `<s>[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nQ [/INST] A </s>` with the short bilingual
  system prompt of Chinese-LLaMA-Alpaca-2 when the conversation has none.
- `firefly`: `<s>input</s></s>target</s>` for each turn.
- `chatml`: `<|im_start|>role\\ncontent<|im_end|>\\n`, no default system prompt.
- `auto`: the tokenizer's own chat template (an error when it has none).
- a path to a `.jinja` file: a user template, with the same variables as Hugging Face's
  (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`).
"""

from __future__ import annotations

from pathlib import Path

from langadapt.errors import LangadaptError

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA2_SYSTEM_PROMPT = "You are a helpful assistant. 你是一个乐于助人的助手。"

_ALPACA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

_LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% else %}{% set system = '" + ALPACA2_SYSTEM_PROMPT + "' %}{% endif %}"
    "{% set first_user = namespace(done=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if not first_user.done %}{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% set first_user.done = true %}"
    "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_FIREFLY = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + message['content'] + eos_token + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # end-of-turn tokens of common templates
BUILTIN_TEMPLATES = {"alpaca": _ALPACA, "llama2-chat": _LLAMA2_CHAT, "firefly": _FIREFLY, "chatml": _CHATML}
TEMPLATE_HELP = {
    "alpaca": "Stanford Alpaca: preamble, ### Instruction: / ### Response:, answer + EOS",
    "llama2-chat": f"Llama-2 chat [INST] <<SYS>> ... [/INST] with the Alpaca-2 system prompt '{ALPACA2_SYSTEM_PROMPT}'",
    "firefly": "Firefly: <s>input</s></s>target</s> per turn",
    "chatml": "ChatML: <|im_start|>role\\ncontent<|im_end|> (Qwen, SmolLM2, ...)",
    "auto": "the tokenizer's own chat template (SmolLM2: ChatML with its default system prompt)",
}


def resolve_template(tokenizer, name: str) -> str:
    """The Jinja chat template called `name` (a built-in, `auto`, or a path to a .jinja file)."""
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            raise LangadaptError("template 'auto': this tokenizer has no chat template of its own; choose one of "
                                 f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file")
        return own if isinstance(own, str) else own.get("default", next(iter(own.values())))
    path = Path(name)
    if path.suffix in (".jinja", ".j2", ".txt") or path.is_file():
        if not path.is_file():
            raise LangadaptError(f"template file {path} not found")
        return path.read_text(encoding="utf-8")
    raise LangadaptError(f"unknown template '{name}'; choose one of {', '.join([*BUILTIN_TEMPLATES, 'auto'])} "
                         "or give a .jinja file")


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The text of `messages` under `template` (a Jinja string), special tokens written out."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 errors: a broken user template
        raise LangadaptError(f"the chat template failed to render: {type(e).__name__}: {e}") from e


def answer_spans(tokenizer, template: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn in it.

    Assistant turn i spans from the end of `render(messages[:i], add_generation_prompt=True)` to the
    end of `render(messages[:i+1])`: its content and the end-of-turn marker the template writes
    after it (the model must learn to stop), but not the marker that opens it (the prompt).
    """
    text = render(tokenizer, template, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, template, messages[:i + 1])
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise LangadaptError("the chat template renders a conversation's beginning differently as the "
                                 "conversation grows, so answers cannot be located in it; the answer masks need a "
                                 "template whose rendering of the first turns does not change when turns are added")
        as_user = render(tokenizer, template, [*messages[:i], {"role": "user", "content": message["content"]}])
        if message["content"] not in upto[len(prompt):] or as_user == upto:
            raise LangadaptError("the chat template never marks an assistant turn: an assistant message's content "
                                 "does not appear after the generation prompt; use a template that renders "
                                 "assistant messages (e.g. chatml)")
        spans.append((len(prompt), len(upto)))
    return text, spans


def stop_token_ids(tokenizer, template: str) -> list[int]:
    """EOS plus the template's end-of-turn marker when it is a single token of the vocabulary."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[m] for m in END_OF_TURN if m in template and m in vocab]
    return list(dict.fromkeys(ids))
