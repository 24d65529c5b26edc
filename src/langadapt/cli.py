"""The `langadapt` command line. This file only parses arguments and delegates.

Each subcommand names a `module:function` that receives the parsed arguments; the module
is imported only when that subcommand runs, so `--help` stays fast (no torch import).
Logic, printing of results included, lives in the stage packages.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from langadapt import __version__
from langadapt.errors import LangadaptError

MODEL_HELP = ("a hub id, a local HF model directory, a .gguf file (converted once into $LANGADAPT_HOME, "
              "default ~/.cache/langadapt) or the alias 'smollm2-135m'")
CORPUS_HELP = "text files, directories (read recursively), globs, .jsonl, .conllu, .csv/.tsv, .gz"
LANGS = "bo (Tibetan), zh (Chinese), ko (Korean), en (English) or any other code (generic profile)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add(sub, name: str, target: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose handler is `target` = "package.module:function"."""
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)
    p.set_defaults(_target=target)
    return p


def _add_reading_args(p: argparse.ArgumentParser, lang_required: bool = False) -> None:
    """How a corpus is read: the options every command that reads text shares."""
    if lang_required:
        p.add_argument("--lang", required=True, help=f"language profile: {LANGS}")
    else:
        p.add_argument("--lang", default="generic", help=f"language profile: {LANGS}")
    p.add_argument("--field", default="text", help="JSON field to read from .jsonl/.json records")
    p.add_argument("--column", default=None,
                   help="column (name or 0-based index) to read from .csv/.tsv; default: the longest text column")
    p.add_argument("--clean", choices=["none", "kangyur"], default="none",
                   help="strip known markup: 'kangyur' removes Derge Kangyur folio marks [1b], [1b.1], {D1} "
                        "and keeps the correction of (error,correction) pairs")
    p.add_argument("--on-bad-bytes", choices=["error", "replace"], default="error",
                   help="invalid UTF-8: stop with the file and byte offset, or replace with U+FFFD and count them")


def _add_corpus_args(p: argparse.ArgumentParser) -> None:
    """Positional corpus paths plus the reading options."""
    p.add_argument("paths", nargs="+", metavar="PATH", help=CORPUS_HELP)
    _add_reading_args(p)


def _add_corpus_option(p: argparse.ArgumentParser, required: bool) -> None:
    """`--corpus PATH...` plus the reading options (--lang required)."""
    p.add_argument("--corpus", nargs="+", required=required, metavar="PATH", help=CORPUS_HELP)
    _add_reading_args(p, lang_required=True)


def _add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The full `langadapt` argument parser."""
    parser = argparse.ArgumentParser(
        prog="langadapt",
        description="Teach an English-centric open LLM a new language: measure and extend its tokenizer, "
                    "resize and initialise its embeddings, continue pretraining, instruction-tune, "
                    "evaluate and serve.\n\nMODEL arguments accept a hub id, a local HF directory, a .gguf file "
                    "or the alias 'smollm2-135m' (the embedded default, SmolLM2-135M-Instruct).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"langadapt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    stages = parser.add_subparsers(title="commands", metavar="COMMAND")

    # --- corpus -------------------------------------------------------------------
    corpus = stages.add_parser("corpus", help="read and inspect text corpora",
                               description="Read and inspect text corpora.")
    corpus_cmds = corpus.add_subparsers(title="corpus commands", metavar="ACTION")
    p = _add(corpus_cmds, "stats", "langadapt.corpus.stats:run_stats",
             "files, records, characters, units, script share, duplicates and bad bytes of a corpus",
             description="Stream a corpus once and print what is in it: files, records, characters, counting "
                         "units of the language, target-script share, exact-duplicate records, bad bytes "
                         "replaced, and records mostly in another script. With --tokenizer, also tokens per "
                         "character and per unit.")
    _add_corpus_args(p)
    p.add_argument("--tokenizer", metavar="SPEC", default=None,
                   help="also count tokens with this tokenizer (HF dir, tokenizer.model, .gguf, alias)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to this JSON file")

    # --- tokenizer ----------------------------------------------------------------
    tokenizer = stages.add_parser("tokenizer", help="train, extend (merge), prune and measure tokenizers",
                                  description="Train, extend (merge), prune and measure tokenizers.")
    tokenizer_cmds = tokenizer.add_subparsers(title="tokenizer commands", metavar="ACTION")

    p = _add(tokenizer_cmds, "train", "langadapt.tokenizer.train:run",
             "train a SentencePiece model (BPE or unigram) on target-language text",
             description="Stream the corpus (normalised by the language profile, split into sentences) into "
                         "sentencepiece's trainer, sampling at most --sample-sentences sentences so memory stays "
                         "flat. Defaults suit a donor for `tokenizer merge`: identity normalisation, split digits, "
                         "no byte fallback, character coverage 0.9995 for bo/zh/ko. Writes <out>/<name>.model, "
                         "<name>.vocab and adaptation.json.")
    _add_corpus_option(p, required=True)
    _add_out_args(p)
    p.add_argument("--vocab-size", type=int, required=True, help="number of pieces")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="sentencepiece algorithm")
    p.add_argument("--name", default=None, help="file name stem (default: <lang>-<type>-<vocab>)")
    p.add_argument("--sample-sentences", type=int, default=None,
                   help="sentences sentencepiece keeps (random sample; default 2,000,000)")
    p.add_argument("--character-coverage", type=float, default=None,
                   help="share of characters covered (default 0.9995 for bo/zh/ko/ja, else 1.0)")

    p = _add(tokenizer_cmds, "merge", "langadapt.tokenizer.merge:run",
             "extend a base tokenizer with target-language pieces",
             description="SentencePiece bases (Llama-1/2, Mistral, Baichuan): merge a donor SentencePiece model "
                         "(--add, or one trained here from --corpus as a BPE of --vocab-size pieces). By default "
                         "only donor pieces with target-script characters are added, scored in the donor's own "
                         "order (so target text is cut as the donor cuts it and other text exactly as before), "
                         "and unreachable pieces are repaired or dropped. --compat chinese-llama appends every "
                         "missing piece with score 0 (the published recipe). Byte-level BPE bases (SmolLM2, "
                         "Llama-3, Qwen): --corpus with --vocab-size new tokens. Writes an HF tokenizer dir with "
                         "merge_report.json and adaptation.json.")
    p.add_argument("--base", required=True, metavar="TOKENIZER",
                   help="base tokenizer: HF dir, tokenizer.model, .gguf, alias or hub id")
    p.add_argument("--add", default=None, metavar="SPM_MODEL", help="donor SentencePiece .model to merge")
    _add_corpus_option(p, required=False)
    _add_out_args(p)
    p.add_argument("--vocab-size", type=int, default=None,
                   help="with --corpus: donor vocabulary (SentencePiece base) or new tokens (byte-level base)")
    p.add_argument("--compat", choices=["chinese-llama"], default=None,
                   help="reproduce the Chinese-LLaMA recipe exactly (score 0, every missing piece)")
    p.add_argument("--sample-sentences", type=int, default=None,
                   help="with --corpus (SentencePiece base): sentences the donor trainer keeps (default 2,000,000)")
    p = _add(tokenizer_cmds, "prune", "langadapt.tokenizer.prune:run_prune",
             "keep only the tokens a corpus of the kept languages needs (LLMPruner for any fast BPE/Unigram)",
             description="Count the base tokenizer's tokens on the corpus (streamed, in batches) and keep: special/"
                         "added tokens, <unk>, byte tokens (the 256 byte-level symbols or SentencePiece <0xNN> "
                         "pieces), every token used at least --min-count times and, for BPE, the intermediate "
                         "tokens its merges need. New ids follow the old order. The corpus tokenises to the same "
                         "token strings as before; other text falls back to smaller pieces and bytes (and still "
                         "decodes back, except for Unigram models without byte fallback: <unk>). Writes an HF "
                         "tokenizer dir with id_map.json ({old_vocab_size, new_vocab_size, old_to_new: {old: new}, "
                         "new_to_old: [old ids]}, for `model prune`), prune_report.json and adaptation.json.")
    p.add_argument("--base", required=True, metavar="TOKENIZER",
                   help="base tokenizer: HF dir, tokenizer.model, .gguf, alias or hub id")
    _add_corpus_option(p, required=True)
    _add_out_args(p)
    p.add_argument("--min-count", type=int, default=1, metavar="K", help="keep tokens used at least K times")

    p = _add(tokenizer_cmds, "report", "langadapt.tokenizer.report:run_report",
             "compare tokenizers on a corpus or a sentence: tokens per unit, byte fallback, vocab used",
             description="For each --tokenizer: vocab size, tokens, characters, units of the language (Tibetan "
                         "syllables, Chinese characters, words otherwise), tokens per char and per unit, UTF-8 "
                         "bytes per token, byte-fallback share, unk share and share of the vocab used; a Markdown "
                         "table on stdout. Byte fallback = SentencePiece <0xNN> pieces; for byte-level BPE, tokens "
                         "that are not whole characters (their bytes are not complete UTF-8 characters). "
                         "Special tokens are not added. With --text, also the pieces of each tokenizer.")
    p.add_argument("--tokenizer", action="append", required=True, metavar="SPEC",
                   help="a tokenizer (HF dir, tokenizer.model, .gguf, alias, hub id); repeat to compare")
    p.add_argument("--name", action="append", default=None,
                   help="display name of the tokenizer at the same position (default: its basename)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", nargs="+", metavar="PATH", help=CORPUS_HELP)
    source.add_argument("--text", default=None, help="one text instead of a corpus: also prints the pieces")
    _add_reading_args(p, lang_required=True)
    p.add_argument("--max-chars", type=int, default=None, metavar="N", help="read at most N characters of the corpus")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also draw tokens per unit as a bar chart PNG")

    # --- model --------------------------------------------------------------------
    model = stages.add_parser("model", help="load and inspect models",
                              description="Load and inspect models. " + MODEL_HELP)
    model_cmds = model.add_subparsers(title="model commands", metavar="ACTION")
    p = _add(model_cmds, "info", "langadapt.model.load:info_command",
             "print a model's facts: architecture, parameters, vocab, tokenizer type, tied embeddings, "
             "chat template, shape, dtype (reads config and safetensors headers, not the weights)")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p = _add(model_cmds, "extend", "langadapt.model.extend:run_extend",
             "resize a model's embeddings and LM head for an extended tokenizer and initialise the new rows",
             description="Check that TOKENIZER extends the base model's own tokenizer (same strings at the same "
                         "ids), resize the input embeddings and the LM head (tied or untied, kept as they were), "
                         "initialise the new rows and write a standard model directory with the tokenizer and "
                         "adaptation.json. Logits over the old vocabulary are unchanged.")
    p.add_argument("--base", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the extended tokenizer (e.g. from `tokenizer merge`)")
    p.add_argument("--init", choices=["mean", "random", "hf-default"], default="mean",
                   help="new rows: 'mean' of the base rows of the pieces the base tokenizer makes of each new "
                        "token; 'random' N(0, initializer_range); 'hf-default' transformers' mean_resizing")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                   help="pad the vocabulary to a multiple of N rows (padding rows get the mean of all base rows)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inits")
    _add_out_args(p)
    p = _add(model_cmds, "prune", "langadapt.model.prune:run_prune",
             "keep only the embedding and LM-head rows of a pruned tokenizer's tokens",
             description="Slice the embedding and LM-head rows with the id_map.json written by `tokenizer prune`, "
                         "remap the special-token ids in the config and write a standard model directory; "
                         "prints the parameters before and after.")
    p.add_argument("--base", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="the pruned tokenizer (with id_map.json)")
    _add_out_args(p)

    # --- train (pretrain, merge) ----------------------------------------------------
    from langadapt.train.recipe import add_recipe_args  # torch-free

    p = _add(stages, "pretrain", "langadapt.train.pretrain:run_pretrain",
             "continued pretraining on packed blocks: stage embeddings, lora or full (transformers Trainer)",
             description="Tokenise the corpus once into a cache of packed blocks (documents joined with EOS), "
                         "then train with transformers' Trainer: stage 'embeddings' (embeddings + LM head only), "
                         "'lora' (LoRA on q,k,v,o,gate,up,down + embeddings + LM head) or 'full'. Every recipe key "
                         "can be given in --config RECIPE.yaml or as --key value (the command line wins). Writes "
                         "<out>/checkpoints, metrics.jsonl, curves.png and <out>/adapter (or <out>/model for "
                         "stage full). --resume true continues from the newest complete checkpoint. Multi-GPU: "
                         "accelerate launch --config_file configs/accelerate/ddp.yaml -m langadapt.train.pretrain "
                         "--config RECIPE.yaml")
    add_recipe_args(p)
    p = _add(stages, "merge", "langadapt.train.merge:run_merge",
             "fold a pretrain adapter (LoRA + trained embedding/head rows) into a full model dir",
             description="Load the base model the adapter was trained on (or --base), resize its vocabulary to "
                         "the adapter's if needed, merge the LoRA weights, write the trained rows and save a "
                         "standard model dir with the tokenizer and adaptation.json. Refuses an adapter whose "
                         "vocabulary or base model does not match.")
    p.add_argument("--adapter", required=True, metavar="DIR", help="an adapter dir written by `langadapt pretrain`")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--base", default=None, metavar="MODEL", help="base model (default: the one in adaptation.json)")
    p.add_argument("--dtype", default=None, help="save in this dtype (default: the base model's)")
    p.add_argument("--in-memory", action="store_true",
                   help="load the whole model and merge with peft (default for a local safetensors base: "
                        "shard by shard, peak memory about one shard)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    # --- eval ---------------------------------------------------------------------
    evaluate = stages.add_parser("eval", help="evaluate models", description="Evaluate models.")
    eval_cmds = evaluate.add_subparsers(title="eval commands", metavar="ACTION")
    p = _add(eval_cmds, "bpc", "langadapt.eval.bpc:run_bpc",
             "bits per character and per byte of a text under a model (comparable across tokenizers)",
             description="Negative log-likelihood of a text, read through the language profile (records joined "
                         "with newlines), scored with a sliding window: each window holds --context tokens and "
                         "moves by --stride; only the tokens not scored by an earlier window count, so each "
                         "token is scored once with at least context-stride tokens before it (except at the "
                         "start). With a BOS token the first text token is scored after BOS. Reports bits per "
                         "character and per UTF-8 byte (comparable across tokenizers), per-token perplexity "
                         "(not comparable) and tokens/s.")
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--text", required=True, nargs="+", metavar="PATH",
                   help="text files, directories, globs, .jsonl, .conllu, .csv/.tsv, .gz")
    p.add_argument("--lang", default="generic", help=f"language profile: {LANGS}")
    p.add_argument("--field", default="text", help="JSON field to read from .jsonl/.json records")
    p.add_argument("--max-chars", type=int, default=None, metavar="N",
                   help="score only the first N characters of the text (after normalisation)")
    p.add_argument("--context", type=int, default=1024, help="tokens per window")
    p.add_argument("--stride", type=int, default=512, help="tokens the window moves by (below --context)")
    p.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, ...)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to this JSON file")

    # --- sft ------------------------------------------------------------------------
    from langadapt.train.recipe import SftRecipe

    p = _add(stages, "sft", "langadapt.train.sft:run_sft",
             "instruction tuning: loss on assistant turns only, LoRA on a merged model or continuing an adapter",
             description="Read instruction data (Alpaca {instruction,input,output}, Firefly {kind,input,target}, "
                         "prompt {input,target}, {messages:[{role,content}]}, ShareGPT {conversations:[{from,value}]}, "
                         "QA {context,question,answer}; .json arrays or JSON Lines; the format is detected per file), "
                         "render each conversation with a chat template and train on the assistant turns only "
                         "(--train-on-prompt, --last-turn-only). Over-long examples keep the end of the prompt and "
                         "the start of the answer within max_seq_len; the summary counts what was cut or dropped. "
                         "Same engine, stages, checkpoints and outputs as `pretrain`; the held-out evaluation is "
                         "the loss on answers. Merge the adapter with `langadapt merge`.")
    p.add_argument("--list-templates", action="store_true", help="list the chat templates and exit")
    add_recipe_args(p, SftRecipe)

    # --- chat ---------------------------------------------------------------------
    p = _add(stages, "chat", "langadapt.serve.chat:run_chat",
             "chat with a model in the terminal (streams tokens; /reset, /system TEXT, /exit)",
             description="Interactive multi-turn chat that streams tokens as they are generated and keeps as "
                         "much history as fits in the context window (oldest turns dropped first). Commands: "
                         "/reset (forget the history), /system TEXT (set the system prompt and reset), /exit. "
                         "--prompt TEXT, or text piped on stdin, answers once and exits.")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help=MODEL_HELP + "; with --adapter, default: the base the adapter was trained on")
    p.add_argument("--adapter", default=None, metavar="DIR", help="an adapter dir from `pretrain` or `sft`, "
                   "merged into the model in memory")
    p.add_argument("--template", default="auto", help="chat template: alpaca, llama2-chat, firefly, chatml, auto "
                   "(the tokenizer's own) or a .jinja file")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate per answer at most")
    p.add_argument("--greedy", action="store_true",
                   help="plain greedy decoding (ignores temperature, top-p, top-k and repetition penalty)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: keep the top tokens up to this mass")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.1, help="penalty for repeated tokens (1: none)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")

    # --- run ----------------------------------------------------------------------
    p = _add(stages, "run", "langadapt.pipeline:run_command",
             "the whole recipe from one YAML file: tokenizer -> extend -> pretrain -> merge -> sft -> merge -> eval",
             description="Run every step of a run recipe (see recipes/ and the README's 'Recipe format'): train and "
                         "merge (or prune) the tokenizer, extend (or prune) the model, continued pretraining "
                         "(stage embeddings, then lora), merge, instruction tuning, merge, and an evaluation "
                         "(tokenizer report, held-out bits per char before and after). Writes <out>/report.md "
                         "with tables and PNG plots. A step whose output exists and was made from the same "
                         "recipe is skipped, so an interrupted run resumes where it stopped.")
    p.add_argument("recipe", metavar="RECIPE.yaml", help="the run recipe")
    p.add_argument("--dry-run", action="store_true",
                   help="check paths, hyperparameters and the plan, print the plan, train nothing")
    p.add_argument("--out", default=None, metavar="DIR", help="override the recipe's out")
    p.add_argument("--from-step", default=None, metavar="STEP", help="redo this step and every later one")

    # --- demo ---------------------------------------------------------------------
    p = _add(stages, "demo", "langadapt.demo:demo_command",
             "the whole recipe on the embedded default (SmolLM2-135M + the embedded Korean corpus), ~10 min on CPU",
             description="`langadapt run` on recipes/demo.yaml: extend SmolLM2-135M-Instruct's tokenizer with Korean "
                         "pieces trained on the embedded corpus (konlpy's constitution and bills), continue "
                         "pretraining, instruction-tune on question/answer pairs derived from the same corpus, "
                         "evaluate, and print where the report is.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory")
    p.add_argument("--minutes", type=float, default=None, help="scale the training budget to about this many minutes")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")

    return parser


# ----------------------------------------------------------------------------- main

def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of `parser` and of its subcommands."""
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _option_strings(sub)
    return options


def _with_suggestion(word: str, parser: argparse.ArgumentParser) -> str:
    """`word`, followed by the nearest known option when it looks like a misspelt one."""
    if not word.startswith("--"):
        return word
    close = difflib.get_close_matches(word.split("=")[0], _option_strings(parser), n=1)
    return f"{word} (did you mean {close[0]}?)" if close else word


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `langadapt` command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: " + " ".join(_with_suggestion(word, parser) for word in unknown))
    target = getattr(args, "_target", None)
    if target is None:
        # A group without its action (e.g. `langadapt corpus`): show that group's help.
        parser.parse_args((argv if argv is not None else sys.argv[1:]) + ["--help"])
        return 2
    module_name, func_name = target.split(":")
    debug = args.debug or os.environ.get("LANGADAPT_DEBUG") == "1"
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(args)
    except LangadaptError as e:
        if debug:
            raise
        print(f"langadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("langadapt: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
