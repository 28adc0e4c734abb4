"""Model-level evaluations: perplexity, embedding fidelity, activation capture.

Each compares the model with its own norm layers ("exact") against the same
model patched with IterL2Norm norms (:mod:`iterl2norm.patching`) at several
settings, on the same tokens, in one process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._env import progress_bar
from .patching import find_norms, patched

__all__ = [
    "Setting",
    "capture",
    "default_text_path",
    "embedding_fidelity",
    "perplexity",
    "read_text",
    "settings_grid",
]

WIKITEXT = Path("shared") / "data" / "wikitext-2-raw-test.txt"


def default_text_path() -> Path:
    """The WikiText-2 raw test split beside the repository (../shared/data/...)."""
    candidates = [Path.cwd().parent / WIKITEXT, Path(__file__).resolve().parents[3] / WIKITEXT]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"the WikiText-2 test split is not at {candidates[0]}; pass --text FILE")


def read_text(path: str | Path | None) -> tuple[str, Path]:
    """The text of ``path`` (default: WikiText-2's test split), and its path."""
    path = default_text_path() if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"text file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"text file {str(path)!r} is empty")
    return text, path


@dataclass(frozen=True)
class Setting:
    """One way to run the norms: exact (the model's own) or patched."""

    steps: int | None  # None: exact
    fmt: str | None = None  # emulated datapath of the norm; None: native
    schedule: str | None = None

    @property
    def label(self) -> str:
        if self.steps is None:
            return "exact"
        where = "native" if self.fmt is None else self.fmt
        sched = "" if self.schedule in (None, "paper") else f", {self.schedule}"
        return f"IterL2Norm {self.steps} step{'s' * (self.steps != 1)}, {where}{sched}"

    def kwargs(self) -> dict:
        return {"steps": self.steps, "fmt": self.fmt, "schedule": self.schedule}


def settings_grid(
    steps: Sequence[int], fmts: Sequence[str | None], schedule: str | None = None
) -> list[Setting]:
    """Exact first, then every (format, steps)."""
    return [Setting(None)] + [Setting(n, f, schedule) for f in fmts for n in steps]


def _bar(total: int, desc: str, enabled: bool):
    return progress_bar(total, unit="window", desc=desc, enabled=enabled)


def perplexity(
    model,
    ids: torch.Tensor,
    seqlen: int = 2048,
    stride: int | None = None,
    progress: str | None = None,
) -> dict:
    """Perplexity of ``model`` on token ids (1-D).

    ``stride=None``: non-overlapping windows of ``seqlen`` tokens (GPTQ-style;
    a shorter tail is dropped, unless it is the only window), each scoring its
    ``seqlen - 1`` next-token predictions. With ``stride``: windows of up to
    ``seqlen`` tokens every ``stride`` tokens, each scoring only the tokens
    the previous window did not (the Hugging Face perplexity guide).
    PPL = exp(mean negative log-likelihood over every scored token).
    """
    n = ids.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens, got {n}")
    if stride is None:
        starts = list(range(0, max(n - seqlen, 0) + 1, seqlen))
        spans = [(s, min(s + seqlen, n), min(s + seqlen, n) - s - 1) for s in starts]
    else:
        spans, prev_end = [], 0
        for begin in range(0, n, stride):
            end = min(begin + seqlen, n)
            scored = end - max(prev_end, begin + 1) if prev_end else end - begin - 1
            spans.append((begin, end, scored))
            prev_end = end
            if end == n:
                break
    nll, count = 0.0, 0
    bar = _bar(len(spans), progress, progress is not None)
    with torch.no_grad():
        for begin, end, scored in spans:
            window = ids[begin:end].unsqueeze(0)  # (1, T)
            logits = model(input_ids=window).logits.float()  # (1, T, vocab)
            logp = torch.log_softmax(
                logits[0, -scored - 1 : -1], dim=-1
            )  # predictions of the last `scored` tokens
            targets = window[0, -scored:]
            nll -= logp.gather(1, targets[:, None]).sum().item()
            count += scored
            bar.update()
    bar.close()
    return {"ppl": math.exp(nll / count), "nll": nll, "tokens": count, "windows": len(spans)}


def compare_perplexity(
    model,
    ids: torch.Tensor,
    settings: Sequence[Setting],
    seqlen: int,
    stride: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """One row per setting: perplexity and its ratio to the exact model's."""
    rows = []
    for setting in settings:
        desc = setting.label if progress else None
        if setting.steps is None:
            result = perplexity(model, ids, seqlen, stride, desc)
        else:
            with patched(model, **setting.kwargs()):
                result = perplexity(model, ids, seqlen, stride, desc)
        rows.append({"setting": setting.label, **setting.kwargs(), **result})
    exact = rows[0]["ppl"]
    for row in rows:
        row["ratio"] = row["ppl"] / exact
    return rows


def sentences(text: str, count: int, min_words: int = 5, max_words: int = 60) -> list[str]:
    """The first ``count`` sentences of a text, skipping WikiText headings."""
    out = []
    for row in text.split("\n"):
        row = row.strip()
        if not row or row.startswith("="):
            continue
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", row):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
                if len(out) == count:
                    return out
    if not out:
        raise ValueError("the text has no sentence of 5 to 60 words")
    return out


def mean_pooled(
    encoder, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 128
) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them for all-MiniLM-L6-v2:
    token embeddings averaged over the attention mask. (N, d) float64."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = encoder(**batch).last_hidden_state.double()  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).double()  # (B, T, 1)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
    return torch.cat(out)


def embedding_fidelity(
    encoder, tokenizer, texts: Sequence[str], settings: Sequence[Setting], progress: bool = True
) -> list[dict]:
    """Cosine similarity of each setting's sentence embeddings to the exact ones."""
    exact = mean_pooled(encoder, tokenizer, texts)
    rows = []
    bar = _bar(len(settings) - 1, "settings", progress)
    for setting in settings:
        if setting.steps is None:
            continue
        with patched(encoder, **setting.kwargs()):
            emb = mean_pooled(encoder, tokenizer, texts)
        cos = torch.nn.functional.cosine_similarity(emb, exact, dim=-1)
        rows.append(
            {
                "setting": setting.label,
                **setting.kwargs(),
                "sentences": len(texts),
                "mean_cos": cos.mean().item(),
                "min_cos": cos.min().item(),
            }
        )
        bar.update()
    bar.close()
    return rows


def capture(model, run: Callable[[], object], max_rows_per_layer: int, seed: int = 0):
    """The rows that reach each norm layer while ``run()`` drives the model.

    Returns (rows (N, d) float32 array, per-layer records). Layers whose width
    differs from the most common one are skipped and recorded as such.
    """
    norms = list(find_norms(model))
    if not norms:
        raise ValueError(f"{type(model).__name__} has no LayerNorm or RMSNorm layer to capture")
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in norms}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(
                args[0].detach().reshape(-1, args[0].shape[-1]).float()
            )
        )
        for name, module, _ in norms
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    widths = [rows[0].shape[-1] for rows in seen.values() if rows]
    width = max(set(widths), key=widths.count)
    gen = torch.Generator().manual_seed(seed)
    kept, layers = [], []
    for name, _, kind in norms:
        rows = torch.cat(seen[name]) if seen[name] else torch.empty(0, width)
        record = {"layer": name, "kind": kind, "width": rows.shape[-1], "rows": 0}
        if rows.shape[-1] == width and rows.shape[0]:
            pick = torch.randperm(rows.shape[0], generator=gen)[:max_rows_per_layer]
            kept.append(rows[pick.sort().values])
            record["rows"] = len(pick)
        layers.append(record)
    return torch.cat(kept).numpy(), layers


def save_capture(rows: np.ndarray, layers: list[dict], out: Path, meta: dict) -> Path:
    """rows to ``out`` (.npy) and what they are to ``out`` with a .json suffix."""
    if out.suffix != ".npy":
        raise ValueError(f"the capture is written as .npy, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, rows)
    sidecar = out.with_suffix(".json")
    sidecar.write_text(
        json.dumps({**meta, "shape": list(rows.shape), "layers": layers}, indent=1) + "\n"
    )
    return sidecar
