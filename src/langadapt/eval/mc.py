"""`langadapt eval mc`: multiple-choice accuracy (C-Eval/CMMLU, Ti-MMLU, generic JSONL), 0- and k-shot.

Reading. `--data` is a file, a folder of per-subject files or a dataset root:
- C-Eval/CMMLU CSV (header `,Question,A,B,C,D,Answer`, C-Eval's `id,question,A,B,C,D,answer[,explanation]`
  too): one CSV per subject; in a root with `dev/` and `test/` the questions come from `test/` and the
  shots from `dev/`; a file inside `test/` takes its shots from `../dev/` of the same name.
- Ti-MMLU JSONL (`{"loc", "polished_ti_content", "answer"}`): the content already lists the options, so
  the prompt shows it as it is; the shots come from `5_shot_Question_Answer/` beside the question folder.
- generic JSONL `{"question", "choices": [...], "answer"}` (answer: a letter, an index or the choice's
  text; optional `"subject"`); shots from `dev/` as for CSV.

Prompts (`--preset`), named after their source so figures compare with published ones:
- `cmmlu`: the official CMMLU prompt (haonan-li/CMMLU `src/mp_utils.py`): "以下是关于{学科}的单项选择题，
  请直接给出正确答案的选项。\\n\\n", each shot "题目：Q\\nA. a\\n...\\n答案是：X\\n\\n", then the question ending
  "答案是：".
- `chinese-llama-alpaca-2`: ymcui/Chinese-LLaMA-Alpaca-2 `scripts/cmmlu/llama2_evaluator.py` without the
  chat prompt: with shots "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\\n\\n" (the English file
  name, as its eval.py passes it), shots "Q\\nA. a\\n...\\n答案：X\\n\\n"; zero-shot the question alone.
- `lm-eval`: lm-evaluation-harness 0.4.x `cmmlu`: description as `cmmlu`, shots "Q.strip()\\nA. a\\n...\\n答案： X"
  each followed by "\\n\\n", the continuation " X" (its target delimiter is a space); special tokens as
  the tokenizer adds them (lm-eval >= 0.4.9; 0.4.0-0.4.8 added no BOS unless `add_bos_token=True`).

Shots are the first k of the dev split in order. When prompt + answer would exceed `--max-length`
tokens, whole shots are dropped, the longest first (as CMMLU does), and counted; a question that does
not fit even without shots is skipped and counted.

Scoring. Each answer is scored by its log-likelihood as it is tokenized inside the prompt: prompt and
prompt + answer are encoded; the context is the longest token prefix the prompt shares with every
prompt + answer (the whole prompt, unless the letter merges with the text before it, such as a
colon; then the merged token is part of every answer) and the answer is the rest. The prediction is
the answer with the highest log-likelihood. One forward pass per question when every answer is one
token (the logits of the last position only); otherwise one row per answer. Rows are batched by
length, left-padded, and only the logits of the answer positions are computed. The tokens that all
questions of a subject (with the same number of shots) start with, the header and the shots, are run
once and their KV cache is reused for every question, so k shots cost little more than zero.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from langadapt.errors import LangadaptError
from langadapt.eval import set_offline
from langadapt.model.batch import prefix_cache, repeated
from langadapt.model.load import MODEL_HELP, load_model, model_context
from langadapt.options import Options, OptionError, option
from langadapt.outputs import write_json_atomic, write_jsonl_atomic
from langadapt.sources import resolve_model_source
from langadapt.tokenizer.load import load_tokenizer

LETTERS = "ABCDEFGHIJ"
TI_MMLU_SHOTS = "5_shot_Question_Answer"

# CMMLU's subject names in Chinese (CMMLU `src/categories.py` name_en2zh, = lm-eval's cmmlu SUBJECTS).
CMMLU_SUBJECTS_ZH = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试", "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
    "computer_security": "计算机安全", "conceptual_physics": "概念物理学", "construction_project_management": "建设工程管理",
    "economics": "经济学", "education": "教育学", "electrical_engineering": "电气工程", "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识", "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学", "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学",
    "global_facts": "全球事实", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理", "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学",
    "high_school_politics": "高中政治", "human_sexuality": "人类性行为", "international_law": "国际法学",
    "journalism": "新闻学", "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学",
    "machine_learning": "机器学习", "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论",
    "modern_chinese": "现代汉语", "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计",
    "professional_law": "专业法学", "professional_medicine": "专业医学", "professional_psychology": "专业心理学",
    "public_relations": "公共关系", "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "world_history": "世界历史", "world_religions": "世界宗教",
}


# ----------------------------------------------------------------------------- questions

@dataclass
class Question:
    """One multiple-choice question. `options` is empty when `text` already lists them (Ti-MMLU);
    `n_choices` answers are possible either way, lettered A, B, ..."""

    subject: str
    text: str
    options: list[str]
    answer: int
    where: str  # "file:line"
    n_choices: int = 4

    @property
    def letters(self) -> str:
        return LETTERS[:self.n_choices]


def _letter_index(value, n: int, where: str, options: list[str] | None = None) -> int:
    """The answer index of `value`: a letter, an integer index or (generic JSONL) an option's text."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and 0 <= value < n:
        return value
    if isinstance(value, str):
        letter = value.strip().upper()
        if len(letter) == 1 and letter in LETTERS[:n]:
            return LETTERS.index(letter)
        if options and value in options:
            return options.index(value)
    raise LangadaptError(f"{where}: answer {value!r} is not one of {', '.join(LETTERS[:n])}"
                         + (f" (or an index 0-{n - 1} or a choice's text)" if options else ""))


def read_csv_questions(path: Path) -> list[Question]:
    """The questions of a C-Eval/CMMLU CSV file (subject = the file name)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    expected = "a header ',Question,A,B,C,D,Answer' (CMMLU) or 'id,question,A,B,C,D,answer' (C-Eval)"
    if not rows:
        raise LangadaptError(f"{path}: empty file; expected {expected}")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    letters = [L for L in LETTERS if L in header]
    if "question" not in lower or "answer" not in lower or letters != list(LETTERS[:len(letters)]) or len(letters) < 2:
        raise LangadaptError(f"{path}:1: header {rows[0]} is not a multiple-choice CSV; expected {expected}")
    q_col, a_col = lower.index("question"), lower.index("answer")
    option_cols = [header.index(L) for L in letters]
    questions = []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{line}"
        if len(row) < len(header):
            raise LangadaptError(f"{where}: {len(row)} columns, the header has {len(header)}")
        options = [row[c] for c in option_cols]
        questions.append(Question(path.stem, row[q_col], options, _letter_index(row[a_col], len(options), where),
                                  where, len(options)))
    return questions


def read_jsonl_questions(path: Path) -> list[Question]:
    """The questions of a Ti-MMLU or generic multiple-choice JSONL file."""
    questions = []
    with open(path, encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            where = f"{path}:{line}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise LangadaptError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if isinstance(record, dict) and "polished_ti_content" in record and "answer" in record:
                questions.append(Question(path.stem, str(record["polished_ti_content"]).strip(), [],
                                          _letter_index(record["answer"], 4, where), where))
            elif isinstance(record, dict) and {"question", "choices", "answer"} <= set(record):
                choices = record["choices"]
                if not (isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
                        and all(isinstance(c, str) for c in choices)):
                    raise LangadaptError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
                questions.append(Question(str(record.get("subject") or path.stem), str(record["question"]), choices,
                                          _letter_index(record["answer"], len(choices), where, choices), where,
                                          len(choices)))
            else:
                got = f"keys {list(record)}" if isinstance(record, dict) else f"a {type(record).__name__}"
                raise LangadaptError(f"{where}: not a multiple-choice record (got {got}); expected Ti-MMLU "
                                     '{"polished_ti_content", "answer"} or {"question", "choices": [...], "answer"}')
    return questions


def read_questions(path: Path) -> list[Question]:
    """The questions of one .csv or .jsonl file."""
    if path.suffix.lower() == ".csv":
        return read_csv_questions(path)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl_questions(path)
    raise LangadaptError(f"{path}: not a multiple-choice file (expected a C-Eval/CMMLU .csv or a .jsonl)")


def question_files(path: str | os.PathLike) -> list[Path]:
    """The question files named by `path`: a file, a folder of per-subject files, or a root with `test/`."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise LangadaptError(f"{p}: no such file or folder")
    for sub in ("test", "Ti-MMLU_subset670"):
        if (p / sub).is_dir():
            p = p / sub
            break
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".csv", ".jsonl"))
    if not files:
        raise LangadaptError(f"{p}: no .csv or .jsonl question files (expected C-Eval/CMMLU CSVs, Ti-MMLU JSONL or "
                             "generic multiple-choice JSONL, or a dataset root with dev/ and test/)")
    return files


def shot_file(question_file: Path) -> Path | None:
    """Where the shots of a question file live: `../dev/NAME` or `../5_shot_Question_Answer/NAME`, if present."""
    for folder in ("dev", TI_MMLU_SHOTS):
        candidate = question_file.parent.parent / folder / question_file.name
        if candidate.is_file() and candidate.resolve() != question_file.resolve():
            return candidate
    return None


# ----------------------------------------------------------------------------- prompts

@dataclass(frozen=True)
class Preset:
    """How a prompt is written. The prompt is `header` + the shots + the question; each shot is the
    question's body + `answer_prefix` + its letter + `shot_end`; a body is `question_prefix` + the
    question + "\\nA. option" per option + `answer_cue`. The answers scored are `answer_prefix` + letter."""

    name: str
    source: str
    header: str
    question_prefix: str
    answer_cue: str
    answer_prefix: str = ""
    shot_end: str = "\n\n"
    strip_question: bool = False
    add_special_tokens: bool = True
    header_zero_shot: bool = True   # write the header also without shots
    subject_in_chinese: bool = True  # CMMLU's Chinese subject names (else the file name as it is)

    def body(self, q: Question) -> str:
        text = q.text.strip() if self.strip_question else q.text
        return (self.question_prefix + text + "".join(f"\n{L}. {o}" for L, o in zip(q.letters, q.options))
                + self.answer_cue)

    def shot(self, q: Question) -> str:
        return self.body(q) + self.answer_prefix + q.letters[q.answer] + self.shot_end

    def answers(self, q: Question) -> list[str]:
        return [self.answer_prefix + L for L in q.letters]

    def prompt(self, subject: str, shots: list[Question], q: Question) -> str:
        name = subject_name(subject) if self.subject_in_chinese else subject
        header = self.header.format(subject=name) if shots or self.header_zero_shot else ""
        return header + "".join(map(self.shot, shots)) + self.body(q)


CMMLU_HEADER = "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
PRESETS = {p.name: p for p in [
    Preset("cmmlu", "haonan-li/CMMLU src/mp_utils.py (format_example, gen_prompt)", CMMLU_HEADER, "题目：", "\n答案是："),
    Preset("chinese-llama-alpaca-2", "ymcui/Chinese-LLaMA-Alpaca-2 scripts/cmmlu/llama2_evaluator.py (no chat prompt)",
           "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "", "\n答案：",
           header_zero_shot=False, subject_in_chinese=False),
    Preset("lm-eval", "EleutherAI/lm-evaluation-harness 0.4.x lm_eval/tasks/cmmlu (_default_template_yaml, "
           "_generate_configs.py)", CMMLU_HEADER, "", "\n答案：", answer_prefix=" ", strip_question=True),
]}


def subject_name(subject: str) -> str:
    """The subject as the prompts write it: CMMLU's Chinese name, else the file name with spaces."""
    return CMMLU_SUBJECTS_ZH.get(subject, subject.replace("_", " "))


def encode(tokenizer, text: str, preset: Preset) -> list[int]:
    """The ids of a whole prompt (with the special tokens the preset's source adds, such as BOS)."""
    return tokenizer(text, add_special_tokens=preset.add_special_tokens)["input_ids"]


def piece_tokens(tokenizer, text: str) -> int:
    """The number of tokens of a piece of a prompt on its own (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(tokenizer, preset: Preset, q: Question, shots: list[Question], max_length: int) -> tuple[str, int] | None:
    """(prompt, shots dropped) whose tokens plus the longest answer fit in `max_length` tokens, dropping
    whole shots, the longest first (the later one of equals), never cutting inside one; None when even
    the question alone does not fit."""
    shots = list(shots)
    longest_answer = max(piece_tokens(tokenizer, a) for a in preset.answers(q))
    dropped = 0
    while True:
        prompt = preset.prompt(q.subject, shots, q)
        if len(encode(tokenizer, prompt, preset)) + longest_answer <= max_length:
            return prompt, dropped
        if not shots:
            return None
        lengths = [piece_tokens(tokenizer, preset.shot(s)) for s in shots]
        del shots[max(range(len(shots)), key=lambda i: (lengths[i], i))]
        dropped += 1


def answer_tokens(tokenizer, preset: Preset, prompt: str, answers: list[str]) -> tuple[list[int], list[list[int]], bool]:
    """(context ids, each answer's ids, merged) as the answers are tokenized inside the prompt.

    The context is the longest token prefix that the encoded prompt shares with every encoded
    prompt + answer: the whole prompt unless an answer merges with the prompt's last characters
    (`merged`; then the merged tokens belong to every answer, so all answers are scored from the
    same context)."""
    prompt_ids = encode(tokenizer, prompt, preset)
    wholes = [encode(tokenizer, prompt + a, preset) for a in answers]
    keep = len(prompt_ids)
    for whole in wholes:
        common = 0
        while common < min(keep, len(whole)) and whole[common] == prompt_ids[common]:
            common += 1
        keep = common
    context = prompt_ids[:keep]
    conts = [whole[keep:] for whole in wholes]
    if not context or any(not c for c in conts) or len({tuple(c) for c in conts}) < len(conts):
        raise LangadaptError(f"the answers {answers} cannot be told apart as tokens after the prompt "
                             f"{prompt[-40:]!r} (empty context, empty or equal answer tokens)")
    return context, conts, keep < len(prompt_ids)


# ----------------------------------------------------------------------------- scoring

MIN_SHARED_PREFIX = 16  # tokens: a shorter shared prefix is not worth a pass of its own


@dataclass
class _Row:
    ids: list[int]
    group: object = None
    targets: list[tuple[int, int, list[int]]] = field(default_factory=list)  # (request, choice, answer ids)


def shared_prefix(rows: list[_Row]) -> int:
    """The tokens every row starts with, short of the positions whose logits score each row's answers."""
    common = len(os.path.commonprefix([row.ids for row in rows]))
    return min([common] + [len(row.ids) - max(len(a) for _, _, a in row.targets) for row in rows])


def score_answers(model, requests: list[tuple[list[int], list[list[int]]]], pad_id: int = 0,
                  batch_tokens: int = 4096, progress: bool = True, groups: list | None = None) -> list[list[float]]:
    """The summed log-likelihood (nats) of each answer after its context, for each (context, answers).

    Each answer needs the row context + answer[:-1]; equal rows (every single-token answer of a
    question) are computed once. Rows are sorted by length, batched up to `batch_tokens` tokens,
    left-padded, and only the last (longest answer) logits of each batch are computed.

    With `groups` (a key per request, such as its subject and number of shots), the tokens that every
    row of a group starts with (the header and the shots) are run once and their KV cache is reused
    for each row of the group, which then runs only its own tokens (the question and answer)."""
    from tqdm import tqdm

    rows: dict[tuple[int, tuple[int, ...]], _Row] = {}
    for r, (context, answers) in enumerate(requests):
        for c, answer in enumerate(answers):
            ids = context + answer[:-1]
            rows.setdefault((r, tuple(ids)), _Row(ids, groups[r] if groups else None)).targets.append((r, c, answer))
    grouped: dict[object, list[_Row]] = {}
    for row in rows.values():
        grouped.setdefault(row.group, []).append(row)
    scores = [[0.0] * len(answers) for _, answers in requests]
    device = next(model.parameters()).device
    bar = tqdm(total=len(requests), unit="q", desc="scoring", file=sys.stderr, disable=not progress)
    done_requests: set[int] = set()
    for group_rows in grouped.values():
        shared = shared_prefix(group_rows) if groups and len(group_rows) > 1 else 0
        prefix = prefix_cache(model, group_rows[0].ids[:shared]) if shared >= MIN_SHARED_PREFIX else None
        shared = shared if prefix is not None else 0
        ordered = sorted(group_rows, key=lambda row: len(row.ids))
        start = 0
        while start < len(ordered):
            end = start + 1
            while end < len(ordered) and len(ordered[end].ids) * (end + 1 - start) <= batch_tokens:
                end += 1
            batch = ordered[start:end]
            width = len(batch[-1].ids) - shared
            keep = max(len(a) for row in batch for _, _, a in row.targets)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, row in enumerate(batch):
                ids[i, width - len(row.ids) + shared:] = torch.tensor(row.ids[shared:])
                mask[i, width - len(row.ids) + shared:] = 1
            positions = shared + (mask.cumsum(1) - 1).clamp(min=0)
            cache = None
            if prefix is not None:  # the padding sits between the shared prefix and each row's own tokens
                mask = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], dim=1)
                cache = repeated(prefix, len(batch))
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=positions.to(device), cache=cache, use_cache=cache is not None,
                               logits_to_keep=keep).logits[:, -keep:]
            for i, row in enumerate(batch):
                for r, c, answer in row.targets:
                    logprobs = torch.log_softmax(logits[i, keep - len(answer):].float(), dim=-1)
                    scores[r][c] = logprobs[torch.arange(len(answer)),
                                            torch.tensor(answer, device=logprobs.device)].sum().item()
                    if r not in done_requests:
                        done_requests.add(r)
                        bar.update(1)
            start = end
    bar.close()
    return scores


def accuracy(correct: list[bool], chance: list[float]) -> dict:
    """n, correct, accuracy, its standard error (sample, as lm-eval) and the chance level, in percent."""
    n = len(correct)
    p = sum(correct) / n if n else 0.0
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "correct": sum(correct), "accuracy": round(100 * p, 2), "stderr": round(100 * stderr, 2),
            "chance": round(100 * sum(chance) / n, 2) if n else None}


# ----------------------------------------------------------------------------- the command

@dataclass
class EvalMcOptions(Options):
    """Multiple-choice accuracy, 0- or k-shot: C-Eval/CMMLU CSVs (a file, a folder or a root with dev/ and
    test/), Ti-MMLU JSONL (shots from 5_shot_Question_Answer/ beside it) or generic JSONL {question, choices,
    answer}. Each answer is scored by its log-likelihood as it is tokenized inside the prompt; the prompt
    follows a published preset. Reports accuracy per subject and overall with standard error, n and the
    chance level, and questions/s."""

    model: str = option(None, metavar="MODEL", required=True, help=MODEL_HELP)
    data: list[str] = option([], metavar="PATH", required=True,
                             help="question file, folder of per-subject files, or dataset root (dev/ + test/)")
    shots: int = option(0, metavar="K", help="the first K questions of the dev split as examples (0: zero-shot)")
    preset: str = option("cmmlu", choices=tuple(PRESETS), help="prompt format: cmmlu (official CMMLU), "
                         "chinese-llama-alpaca-2, lm-eval (lm-evaluation-harness cmmlu)")
    limit: int = option(0, metavar="N", help="the first N questions of each subject (0: all)")
    max_length: int = option(0, metavar="TOKENS", help="longest prompt + answer; longer prompts lose whole shots "
                                                       "(0: the model's context, at most 2048 as CMMLU)")
    batch_tokens: int = option(4096, metavar="TOKENS", help="tokens per forward pass (rows batched by length)")
    dtype: str = option("float32", help="model dtype (float32, bfloat16, ...)")
    json: str | None = option(None, metavar="FILE", help="write the summary to this JSON file")
    predictions: str | None = option(None, metavar="FILE",
                                     help="write each question's log-likelihoods and prediction to this JSONL file")

    def __post_init__(self):
        super().__post_init__()
        for name in ("shots", "limit", "max_length"):
            if getattr(self, name) < 0:
                raise OptionError(name, f"must be 0 or positive, got {getattr(self, name)}")
        if self.batch_tokens < 1:
            raise OptionError("batch_tokens", f"must be positive, got {self.batch_tokens}")


def load_subjects(paths: list[str], shots: int, limit: int) -> list[tuple[str, list[Question], list[Question]]]:
    """(subject, questions (first `limit`), first `shots` dev questions) per question file of `paths`."""
    subjects = []
    for path in paths:
        for f in question_files(path):
            questions = read_questions(f)
            if not questions:
                raise LangadaptError(f"{f}: no questions")
            examples: list[Question] = []
            if shots:
                dev = shot_file(f)
                if dev is None:
                    raise LangadaptError(f"{f}: --shots {shots} needs a dev split: ../dev/{f.name} or "
                                         f"../{TI_MMLU_SHOTS}/{f.name} beside its folder")
                examples = read_questions(dev)[:shots]
                if len(examples) < shots:
                    print(f"warning: {dev} has only {len(examples)} shots", file=sys.stderr)
            subjects.append((questions[0].subject if len({q.subject for q in questions}) == 1 else f.stem,
                             questions[:limit or None], examples))
    return subjects


def evaluate_mc(model, tokenizer, subjects, preset: Preset, max_length: int, batch_tokens: int = 4096,
                progress: bool = True, reuse_prefix: bool = True) -> tuple[dict, list[dict]]:
    """Score every question of `subjects` (from `load_subjects`); return (summary, per-question records).
    `reuse_prefix=False` runs every prompt whole (benchmarks/bench_eval_mc.py compares the two)."""
    requests, kept, records = [], [], []
    skipped, shots_dropped, merged = 0, 0, 0
    for subject, questions, examples in subjects:
        for q in questions:
            fitted = fit_prompt(tokenizer, preset, q, examples, max_length)
            if fitted is None:
                skipped += 1
                continue
            prompt, dropped = fitted
            shots_dropped += dropped
            context, answers, was_merged = answer_tokens(tokenizer, preset, prompt, preset.answers(q))
            merged += was_merged
            requests.append((context, answers))
            kept.append((subject, q, len(examples) - dropped))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = time.perf_counter()
    scores = score_answers(model, requests, pad_id=pad, batch_tokens=batch_tokens, progress=progress,
                           groups=[(subject, n_shots) for subject, _, n_shots in kept] if reuse_prefix else None)
    seconds = time.perf_counter() - start
    per_subject: dict[str, tuple[list[bool], list[float]]] = {}
    for (subject, q, n_shots), (context, answers), lls in zip(kept, requests, scores):
        pred = max(range(len(lls)), key=lambda i: lls[i])
        correct, chance = per_subject.setdefault(subject, ([], []))
        correct.append(pred == q.answer)
        chance.append(1 / q.n_choices)
        records.append({"subject": subject, "where": q.where, "shots": n_shots, "answer": q.letters[q.answer],
                        "prediction": q.letters[pred], "correct": pred == q.answer,
                        "loglikelihoods": [round(x, 4) for x in lls], "context_tokens": len(context),
                        "answer_tokens": [len(a) for a in answers]})
    all_correct = [c for correct, _ in per_subject.values() for c in correct]
    all_chance = [c for _, chance in per_subject.values() for c in chance]
    subjects_acc = {s: accuracy(c, ch) for s, (c, ch) in per_subject.items()}
    summary = {
        "preset": preset.name, "preset_source": preset.source, "max_length": max_length,
        "subjects": subjects_acc,
        "overall": accuracy(all_correct, all_chance),
        "macro_accuracy": round(sum(s["accuracy"] for s in subjects_acc.values()) / len(subjects_acc), 2)
        if subjects_acc else None,
        "shots_dropped": shots_dropped, "questions_skipped_too_long": skipped,
        "answers_merged_with_prompt": merged,
        "seconds": round(seconds, 2),
        "questions_per_second": round(len(requests) / seconds, 2) if seconds > 0 else None,
    }
    return summary, records


def format_mc_table(summary: dict) -> str:
    """A plain-text table: subject, n, accuracy ± stderr, chance."""
    lines = [f"{'subject':40s} {'n':>5s} {'acc %':>7s} {'± se':>6s} {'chance':>7s}"]
    for name, s in [*summary["subjects"].items(), ("overall", summary["overall"])]:
        chance = f"{s['chance']:7.2f}" if s["chance"] is not None else f"{'-':>7s}"
        lines.append(f"{name:40s} {s['n']:5d} {s['accuracy']:7.2f} {s['stderr']:6.2f} {chance}")
    return "\n".join(lines)


def eval_mc_command(opts: EvalMcOptions) -> int:
    """Multiple-choice accuracy per subject and overall; per-question log-likelihoods to --predictions."""
    set_offline()
    preset = PRESETS[opts.preset]
    subjects = load_subjects(opts.data, opts.shots, opts.limit)
    source = resolve_model_source(opts.model)
    tokenizer = load_tokenizer(str(source))
    model = load_model(str(source), dtype=opts.dtype).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    max_length = opts.max_length or min(model_context(model) or 2048, 2048)
    summary, records = evaluate_mc(model, tokenizer, subjects, preset, max_length, opts.batch_tokens)
    summary = {"model": str(opts.model), "data": list(opts.data), "shots": opts.shots, "limit": opts.limit,
               "dtype": opts.dtype, "device": str(next(model.parameters()).device),
               "threads": torch.get_num_threads(), **summary}
    if opts.predictions:
        write_jsonl_atomic(opts.predictions, records)
    if opts.json:
        write_json_atomic(opts.json, summary)
    print(format_mc_table(summary))
    print(f"{opts.shots}-shot ({summary['shots_dropped']} shots dropped, {summary['questions_skipped_too_long']} "
          f"questions too long), preset {preset.name}: {summary['overall']['n']} questions in {summary['seconds']} s, "
          f"{summary['questions_per_second']} questions/s")
    return 0
