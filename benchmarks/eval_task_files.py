"""Write the generation tasks of the seed evaluations as instruction files `langadapt eval generate` reads.

    .venv/bin/python benchmarks/eval_task_files.py OUT_DIR [--data ../shared/data] [--rows 50]

Reads the first `--rows` rows of each source from the shared data folder (never copied into the
project) and writes Alpaca-format JSONL with a `task` field into OUT_DIR:
- `bo-qa.jsonl` (task `qa`): TibetanQA, instruction = context + newline + question, output = answer;
- `zh-summarization.jsonl` (task `summarization`): CSL, instruction "为下面的论文摘要生成标题。",
  input = abstract, output = title;
- `bo-classification.jsonl` (task `classification`): DharmaBench VPCT (verse or prose), instruction asks
  for "Verse" or "Prose", output = the class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_jsonl(path: Path, rows: int) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(rows), fh)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--rows", type=int, default=50)
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "bo-qa.jsonl": [{"task": "qa", "instruction": r["context"] + "\n" + r["question"], "output": r["answer"]}
                        for r in first_jsonl(data / "bo/qa-tibetanqa/tibetanqa-dev.jsonl", args.rows)],
        "zh-summarization.jsonl": [
            {"task": "summarization", "instruction": "为下面的论文摘要生成标题。", "input": abstract, "output": title}
            for _, abstract, title in (line.rstrip("\n").split("\t") for _, line in
                                       zip(range(args.rows), (data / "zh/summarization-csl/dev.tsv").open(encoding="utf-8")))],
        "bo-classification.jsonl": [
            {"task": "classification", "instruction": "Is this Tibetan text verse or prose? Answer Verse or Prose.",
             "input": r["text"], "output": r["class"]}
            for r in first_jsonl(data / "bo/classification-dharmabench/VPCT/test.jsonl", args.rows)],
    }
    for name, rows in files.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(out / name, len(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
