"""The execution policy (runtime/policy.py) changes how the model is cut into pieces, never what
it computes: the golden checkpoint gives its recorded log-probabilities under a policy that makes
every piece tiny (many attention blocks, one head per group, short hash row blocks, short kernel
segments, small feed-forward chunks, the long-input path from the first element)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import FIXTURES, GOLDEN_TOLERANCE, golden_maker
from reformer_seq import ConfigError, ExecutionPolicy, ReformerLM, current_policy, set_policy, use_policy

TINY = dict(attention_block_elems=64, attention_cache_elems=1, head_group_elems=1, hash_row_block=48,
            kernel_segment_rows=96, ff_chunk_short=40, ff_chunk_long=24, long_input_elems=1)


def test_tiny_pieces_give_the_golden_logprobs():
    maker = golden_maker()
    tokens, expected = maker.golden_tokens(), np.load(FIXTURES / "golden" / "logprobs.npy")
    model = ReformerLM.from_pretrained(FIXTURES / "golden" / "checkpoint")
    with use_policy(**TINY):
        got = maker.per_base_logprobs(model, tokens)
    np.testing.assert_allclose(got, expected, rtol=0, atol=GOLDEN_TOLERANCE)


def test_use_policy_restores_and_rejects_unknown_or_bad_values():
    before = current_policy()
    with use_policy(hash_row_block=7) as pol:
        assert current_policy() is pol and pol.hash_row_block == 7
        assert pol.attention_block_elems == before.attention_block_elems  # the rest unchanged
    assert current_policy() == before == ExecutionPolicy()
    with pytest.raises(ConfigError, match="no field hash_rows.*hash_row_block"):
        set_policy(hash_rows=1)
    with pytest.raises(ConfigError, match="positive whole number"):
        ExecutionPolicy(attention_block_elems=0)
    assert current_policy() == before
