"""The hardware model's behaviour is what docs/hw_fingerprints.json recorded
(scripts/hw_fingerprints.py): every preset's cycles, stages, operations and
per-cycle issue trace, and hw.reference's bits, at six d. A change to the
simulator, the reference or the schedule that moves any of them fails here;
if the change is meant, regenerate the file with the command in its script
and say why in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_support import load_script

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "docs" / "hw_fingerprints.json").read_text())


def _check(configs):
    got = load_script("hw_fingerprints").model_fingerprints(configs)
    for name, entry in got.items():
        assert entry == RECORD["model"][name], f"{name}: the model's behaviour changed"


def test_every_preset_behaves_as_recorded():
    from iterl2norm.hw import PRESETS

    _check(list(PRESETS.values()))


@pytest.mark.slow
def test_every_recorded_configuration_behaves_as_recorded():
    script = load_script("hw_fingerprints")
    configs = script.model_configs()
    assert sorted(c.name for c in configs) == sorted(RECORD["model"])
    _check(configs)
