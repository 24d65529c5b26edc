"""RoPE scaling: bits per character of the same held-out tokens with 1x, 2x and 4x the trained context.

The text is one long document: by default the English translation of the Vimalakirtinirdesa in
`../shared/data/bo/parallel-84000` (the English side of the TMX, segments joined with spaces; the
model is English-centric, so far context can help it); `--text FILE` scores a plain text file
instead. It is cut to its first P = 4 x trained-context tokens. For each multiple k of the trained
context the model reads the window [P - k*context, P) and the last `--scored` tokens of the window
are scored, so every row scores the very same tokens and only the context before them differs:
about k*context tokens of it. Each setting is loaded through `langadapt.model.load.load_model(...,
rope_scaling=...)`, i.e. transformers' own rope config. Nothing is fitted or tuned on the text.

    PYTHONPATH=src python benchmarks/bench_rope_scaling.py --json benchmarks/bench_rope_scaling.json

Loss is computed from the final hidden states in chunks (a 32k-token window's full logits would
take 6 GB). Writes the JSON after every row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from langadapt.model.load import load_model
from langadapt.tokenizer.load import load_tokenizer

DEFAULT_TEXT = (Path(__file__).resolve().parents[2] / "shared" / "data" / "bo" / "parallel-84000"
                / "Toh_176-Vimalakirtinirdesa-v1.tmx")
TMX = "{http://www.lisa.org/tmx14}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def read_text(path: Path) -> str:
    """The English segments of a TMX file joined with spaces, or a plain text file."""
    if path.suffix != ".tmx":
        return path.read_text(encoding="utf-8")
    root = ET.parse(path).getroot()
    segs = [(tuv.find(f"{TMX}seg").text or "").strip() for tuv in root.iter(f"{TMX}tuv")
            if tuv.get(XML_LANG) == "en"]
    return " ".join(s for s in segs if s)


def window_nll(model, window: torch.Tensor, scored: int, chunk: int = 512) -> float:
    """Summed NLL (nats) of the last `scored` tokens of `window` given everything before them."""
    with torch.inference_mode():
        hidden = model.model(window.unsqueeze(0)).last_hidden_state[0, -scored - 1:-1]
        targets = window[-scored:]
        nll = 0.0
        for i in range(0, scored, chunk):
            logits = model.lm_head(hidden[i:i + chunk]).float()
            nll += torch.nn.functional.cross_entropy(logits, targets[i:i + chunk], reduction="sum").item()
    return nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--multiples", default="1,2,4", help="window lengths in trained contexts (default plan: "
                    "none at each, and linear/dynamic/yarn at factor k and auto at each k > 1)")
    ap.add_argument("--scored", type=int, default=1024, help="tokens scored at the end of each window")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rows", default=None, help="instead of the default plan: MULTIPLE:SETTING,... (e.g. "
                                                 "1:yarn:2,1:yarn:4: what scaling does to inputs within the trained "
                                                 "context); the rows are added to an existing --json")
    ap.add_argument("--json", default="benchmarks/bench_rope_scaling.json")
    args = ap.parse_args()

    tok = load_tokenizer(args.model)
    text = read_text(Path(args.text))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    context = load_model(args.model, dtype=args.dtype).config.max_position_embeddings
    if args.rows:
        plan = [(int(m), setting) for m, _, setting in (row.partition(":") for row in args.rows.split(","))]
    else:
        plan = [(k, setting) for k in map(int, args.multiples.split(","))
                for setting in ["none"] + ([f"linear:{k}", f"dynamic:{k}", f"yarn:{k}", "auto"] if k > 1 else [])]
    # The scored tokens end at the same place whatever the plan: 4 trained contexts in (or more).
    total = max(4, *(k for k, _ in plan)) * context
    if len(ids) < total:
        raise SystemExit(f"{args.text}: {len(ids)} tokens, need {total}")
    ids = torch.tensor(ids[:total])
    scored_text = tok.decode(ids[-args.scored:].tolist())
    result = {"model": args.model, "text": args.text, "trained_context": context, "scored_tokens": args.scored,
              "scored_characters": len(scored_text), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "rows": []}
    if args.rows and Path(args.json).is_file():
        result["rows"] = json.loads(Path(args.json).read_text(encoding="utf-8"))["rows"]
    for k, setting in plan:
        model = load_model(args.model, dtype=args.dtype, rope_scaling=None if setting == "none" else setting).eval()
        start = time.perf_counter()
        nll = window_nll(model, ids[total - k * context:], args.scored)
        row = {"multiple": k, "window": k * context, "rope_scaling": setting,
               "bits_per_char": round(nll / math.log(2) / len(scored_text), 4),
               "seconds": round(time.perf_counter() - start, 1)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        del model

if __name__ == "__main__":
    main()
