"""Patching real and tiny Hugging Face models, perplexity, embeddings, capture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_support import run_fresh, run_here
from torch import nn

from iterl2norm import IterLayerNorm, IterRMSNorm
from iterl2norm.evaluate import (
    capture,
    embedding_fidelity,
    perplexity,
    save_capture,
    sentences,
    settings_grid,
)
from iterl2norm.patching import find_norms, patch_model, patched, unpatch_model
from tolerances import tol

transformers = pytest.importorskip("transformers")

TINY = {
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
    ),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ),
    "bert": lambda: transformers.BertModel(
        transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ),
}


def _outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", list(TINY))
def test_tiny_models_patched_match_unpatched(arch):
    torch.manual_seed(0)
    model = TINY[arch]().eval()
    ids = torch.randint(0, 100, (2, 16))
    reference = _outputs(model, ids)
    keys = list(model.state_dict())
    originals = {name: module for name, module, _ in find_norms(model)}
    names = patch_model(model, steps=5)
    assert names == list(originals) and len(names) == 5
    for name in names:
        assert isinstance(model.get_submodule(name), (IterLayerNorm, IterRMSNorm))
    assert list(model.state_dict()) == keys  # same names: checkpoints load unchanged
    out = _outputs(model, ids)
    rtol, atol = tol("model_outputs", "native_fp32").values()
    torch.testing.assert_close(out, reference, rtol=rtol, atol=atol * reference.abs().max().item())
    assert unpatch_model(model) == names
    # One Euler step from the exponent start is visibly not the same model.
    with patched(model, steps=1):
        assert (_outputs(model, ids) - reference).abs().max() > 100 * atol
    assert unpatch_model(model) == []  # the context manager already did

    assert all(model.get_submodule(n) is m for n, m in originals.items())
    assert torch.equal(_outputs(model, ids), reference)


def test_hf_rmsnorm_is_matched_by_behaviour_not_by_class():
    model = TINY["llama"]()
    kinds = {type(m).__name__: k for _, m, k in find_norms(model)}
    assert kinds == {"LlamaRMSNorm": "rms_norm"}
    assert not issubclass(type(model.model.norm), (nn.RMSNorm, nn.LayerNorm))

    class NotANorm(nn.Module):  # a "norm" by name with a weight and eps, but not one
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))
            self.eps = 1e-6

        def forward(self, x):
            return x * self.weight

    assert list(find_norms(nn.Sequential(NotANorm()))) == []


def test_patching_keeps_trained_weights_and_restores_on_error():
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    with pytest.raises(RuntimeError, match="inside"), patched(model, steps=3):
        with torch.no_grad():
            model[1].weight.fill_(2.0)
        raise RuntimeError("inside")
    assert type(model[1]) is nn.LayerNorm and torch.equal(model[1].weight, torch.full((8,), 2.0))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4)), "no LayerNorm or RMSNorm"),
        ("not a model", "torch.nn.Module"),
    ],
)
def test_models_without_norms_are_refused(model, message):
    with pytest.raises((ValueError, TypeError), match=message):
        patch_model(model)


def test_perplexity_windows_and_stride():
    class Uniform(nn.Module):  # log-likelihood -log(V) for every token
        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 7)})()

    ids = torch.arange(50) % 7
    plain = perplexity(Uniform(), ids, seqlen=16)
    assert plain["windows"] == 3 and plain["tokens"] == 3 * 15
    assert plain["ppl"] == pytest.approx(7.0)
    strided = perplexity(Uniform(), ids, seqlen=16, stride=8)
    assert strided["tokens"] == 49 and strided["ppl"] == pytest.approx(7.0)


def test_sentences_skip_headings():
    text = " = Title = \n\n A first sentence with words. A second one, also long enough here.\n"
    assert sentences(text, 5) == [
        "A first sentence with words.",
        "A second one, also long enough here.",
    ]


def test_capture_feeds_the_study(tmp_path):
    from iterl2norm.cli import main

    torch.manual_seed(0)
    model = TINY["llama"]().eval()
    ids = torch.randint(0, 100, (1, 24))
    rows, layers = capture(model, lambda: model(input_ids=ids), max_rows_per_layer=10)
    assert rows.shape == (5 * 10, 32) and rows.dtype == np.float32
    assert [layer["rows"] for layer in layers] == [10] * 5
    sidecar = save_capture(rows, layers, tmp_path / "acts.npy", {"model": "tiny-llama"})
    assert json.loads(sidecar.read_text())["shape"] == [50, 32]
    out = tmp_path / "study"
    assert (
        main(
            [
                "study",
                "precision",
                "--quick",
                "--no-progress",
                "--no-plots",
                "--formats",
                "bf16",
                "--dims",
                "32",
                "--inputs",
                str(tmp_path / "acts.npy"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert {r["d"] for r in data["precision"] if r["input"] == "file"} == {32}


# The real models, from their PyPI packages -----------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from iterl2norm.models import load_causal_lm

    return load_causal_lm("smollm2")


def test_smollm2_perplexity_at_five_steps_is_exact_and_one_step_is_not(smollm2):
    from iterl2norm.evaluate import compare_perplexity, read_text

    model, tokenizer = smollm2
    text, _ = read_text(None)
    ids = tokenizer(text[:20000], return_tensors="pt").input_ids[0][:512]
    rows = compare_perplexity(model, ids, settings_grid([5, 1], [None]), seqlen=512, progress=False)
    exact, five, one = (r["ppl"] for r in rows)
    assert abs(five / exact - 1) < 1e-3  # within 0.1%
    assert one / exact > 1.05  # one step from the exponent start: measurably worse
    assert [type(m).__name__ for _, m, _ in find_norms(model)][:1] == ["LlamaRMSNorm"]


def test_minilm_embeddings_stay_close():
    from iterl2norm.evaluate import read_text
    from iterl2norm.models import load_encoder

    encoder, tokenizer = load_encoder("minilm")
    texts = sentences(read_text(None)[0], 32)
    rows = embedding_fidelity(
        encoder, tokenizer, texts, settings_grid([1, 5], [None, "bf16"]), progress=False
    )
    cos = {(r["steps"], r["fmt"]): r["mean_cos"] for r in rows}
    assert cos[5, None] > 1 - 1e-9 and cos[5, "bf16"] > 0.999
    assert cos[1, None] < cos[5, None]


MODEL_COMMAND_ERRORS = [
    (["perplexity", "--model", "/nonexistent/model"], "is neither a packaged model"),
    (["perplexity", "--text", "/nonexistent.txt"], "does not exist"),
    (["embed", "--model", "smollm2"], "needs a model directory"),
    (["capture", "--out", "rows.csv"], "must name a .npy file"),
    (["perplexity", "--fmt", "fp7"], "unknown number format 'fp7'"),
    (["perplexity", "--schedule", "warp"], "unknown schedule 'warp'"),
]


def _check_one_line(status: int, stderr: str, message: str) -> None:
    assert status == 2, stderr
    assert message in stderr.strip().splitlines()[-1] and "Traceback" not in stderr


@pytest.mark.parametrize(("argv", "message"), MODEL_COMMAND_ERRORS)
def test_model_command_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_one_line(*run_here(argv, capsys), message)


def test_model_command_errors_are_one_line_from_a_fresh_interpreter(tmp_path):
    argv, message = MODEL_COMMAND_ERRORS[0]
    _check_one_line(*run_fresh(argv, cwd=tmp_path), message)
