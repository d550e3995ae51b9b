"""Golden test: a small trained checkpoint still gives the same per-base log-probabilities.

``tests/fixtures/golden/`` holds a checkpoint trained by ``tests/fixtures/make_golden.py`` (every
part of the network switched on: local and LSH attention through the compiled kernel, the causal
convolution, axial positions, the reversible stack, copy attention and its mixture) and the
log-probability of each observed base of phiX174's first 1,024 bases under it. Any change of the
model's numbers (a moved module that hashes differently, a reordered reduction that is more than
rounding) fails here. When a change is intended, regenerate the fixture deliberately with
``python tests/fixtures/make_golden.py`` and say why in the commit.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import FIXTURES, GOLDEN_TOLERANCE as TOLERANCE, golden_maker
from reformer_seq import ReformerLM

@pytest.fixture(scope="module")
def golden():
    maker = golden_maker()
    return maker, maker.golden_tokens(), np.load(FIXTURES / "golden" / "logprobs.npy")


def test_golden_checkpoint_gives_the_recorded_logprobs(golden):
    maker, tokens, expected = golden
    got = maker.per_base_logprobs(ReformerLM.from_pretrained(FIXTURES / "golden" / "checkpoint"), tokens)
    assert got.shape == expected.shape == (maker.LENGTH - 1,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_golden_test_would_notice_a_different_hash(golden):
    """The fixture pins the LSH path: other hash rotations move the log-probabilities far past the
    tolerance (so the golden test can fail for the reason it exists)."""
    maker, tokens, expected = golden
    model = ReformerLM.from_pretrained(FIXTURES / "golden" / "checkpoint", hash_seed=1)
    assert np.abs(maker.per_base_logprobs(model, tokens) - expected).max() > 100 * TOLERANCE
