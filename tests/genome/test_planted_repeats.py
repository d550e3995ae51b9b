"""Planted repeats (genome/planted_repeats.py): each planted copy is its source, direct or reverse
complemented, with the lengths asked for; only training windows get them, deterministically."""
from __future__ import annotations

import numpy as np
import torch

from reformer_seq.genome.planted_repeats import RepeatPlanting, plant_repeats
from reformer_seq.tasks.recall import reverse_complement


def random_ids(n, seed):
    return np.random.default_rng(seed).integers(4, 8, n).astype(np.int64)


def test_plant_repeats_copies_and_reverse_complements():
    ids = random_ids(4096, 8)
    plan = RepeatPlanting(rate=1.0, copies=6, min_len=32, max_len=512, rc_fraction=0.5, max_mutation=0.0)
    seen_rc = set()
    for seed in range(6):
        out, done = plant_repeats(ids, np.random.default_rng(seed), plan, reverse_complement)
        assert len(done) == 6
        for src, dst, n, is_rc in done[-1:]:  # the last copy is intact (later copies may overwrite earlier)
            assert src + n <= dst  # the source lies wholly before the copy
            seg = out[src:src + n]
            want = reverse_complement(seg) if is_rc else seg
            assert np.array_equal(out[dst:dst + n], want)
            seen_rc.add(is_rc)
        assert 32 <= min(d[2] for d in done) and max(d[2] for d in done) <= 512
    assert seen_rc == {True, False}
    out, done = plant_repeats(ids, np.random.default_rng(0), RepeatPlanting(rate=0.0), reverse_complement)
    assert done == [] and np.array_equal(out, ids)


def test_dataset_plants_training_windows_only(ecoli_records):
    from reformer_seq.config import DataConfig
    from reformer_seq.genome.windows import build_datasets

    cfg = DataConfig(seq_len=2048, plant_repeats=1.0, rc_augment=False)
    train, val = build_datasets(ecoli_records, cfg)
    plain_train, plain_val = build_datasets(ecoli_records, DataConfig(seq_len=2048, rc_augment=False))
    changed = [not torch.equal(train[i]["input_ids"], plain_train[i]["input_ids"]) for i in range(5)]
    assert all(changed)
    assert all(torch.equal(val[i]["input_ids"], plain_val[i]["input_ids"]) for i in range(5))
    assert torch.equal(train[3]["input_ids"], train[3]["input_ids"])  # deterministic
