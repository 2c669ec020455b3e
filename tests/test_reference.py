"""
Behaviour is unchanged by refactors of the modeling code: a checkpoint written by the code of `main` before issue 15's
split (tests/fixtures/pretraining_reference/, see tests/fixtures/pretraining_reference.py for how it was made) loads
into this checkout's code, and with the same seeds every loss and every parameter gradient of one pre-training step
equals the numbers that the old code stored (float tolerance), for every objective, both masking policies, rows
missing each modality, gradient checkpointing and the ITM settings; its `eval()`-mode outputs equal the stored ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

import pretraining_reference as reference  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def expected():
    return torch.load(reference.FOLDER / "expected.pt", weights_only=True)


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def model():
    return reference.load_reference_model()


def test_fixture_is_small():
    assert sum(path.stat().st_size for path in reference.FOLDER.iterdir()) < 1_000_000


def test_checkpoint_of_old_code_loads_with_identical_eval_outputs(model, expected):
    actual = reference.eval_outputs(model)
    assert sorted(actual) == sorted(expected["eval"])
    for name, value in expected["eval"].items():
        torch.testing.assert_close(actual[name], value, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("scenario", sorted(reference.SCENARIOS))
def test_pretraining_step_equals_old_code(model, expected, scenario):
    losses, grads = reference.run_scenario(model, reference.SCENARIOS[scenario])
    stored = expected["scenarios"][scenario]
    assert sorted(losses) == sorted(stored["losses"])
    for name, value in stored["losses"].items():
        assert losses[name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    assert list(grads) == expected["parameter_names"]
    actual = torch.stack(list(grads.values()))
    for index, name in enumerate(expected["parameter_names"]):
        scale = float(stored["grads"][index].abs().max())
        torch.testing.assert_close(
            actual[index], stored["grads"][index], rtol=RTOL, atol=max(ATOL, RTOL * scale),
            msg=lambda m: f"gradient of {name}: {m}",
        )
