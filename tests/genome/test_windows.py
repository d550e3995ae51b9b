"""Genome windows, the Dataset, the causal/masked collators and sharded loading, checked by recomputation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reformer_seq.config import DataConfig
from reformer_seq.genome.encoded import EncodedRecord, load_genome
from reformer_seq.genome.tokenizers import ByteTokenizer, NucleotideTokenizer
from reformer_seq.genome.windows import (IGNORE_INDEX, GenomeWindowDataset, ambiguous_runs, count_in_runs, datasets_from_config, genome_windows, split_bounds, window_starts)
from reformer_seq.genome.batches import (CausalCollator, MaskedCollator, ShardedSampler, choose_mask_positions, make_dataloader, set_epoch)

from helpers import DATA, ECOLI

NUC = NucleotideTokenizer()
N = NUC.n_id


def small_genomes() -> list[EncodedRecord]:
    return [r for name in ("phiX174_NC_001422.1.fa", "Human_mito_NC_001807.fa", "phage_lambda_NC_001416.1.fa.gz")
            for r in load_genome(DATA / name)]


def with_n_blocks(length: int = 5000, seed: int = 0) -> EncodedRecord:
    """A random record with N blocks of many sizes (and scattered single Ns)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 8, length).astype(np.uint8)
    for _ in range(12):
        s = rng.integers(0, length)
        ids[s:s + rng.integers(1, 700)] = N
    ids[rng.integers(0, length, 5)] = N
    ids[-3:] = N
    return EncodedRecord("synthetic", "synthetic", ids)


# ---------------------------------------------------------------------- positions
def coverage(windows: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    cov = [np.zeros(n, dtype=np.int64) for n in lengths]
    for r, s, e in windows:
        cov[r][s:e] += 1
    return cov


@pytest.mark.parametrize("seq_len", [2, 100, 1000, 4096, 65536])
def test_stride_equal_to_length_covers_each_base_once(seq_len: int) -> None:
    recs = small_genomes()
    w = genome_windows(recs, seq_len, split="all", max_n_fraction=1.0)
    for rec, cov in zip(recs, coverage(w, [len(r) for r in recs])):
        tail = len(rec) % seq_len  # a 1-base tail is the only thing left out (no next base to predict)
        expected = np.ones(len(rec), dtype=np.int64)
        if tail == 1:
            expected[-1] = 0
        assert np.array_equal(cov, expected)
    assert np.all(w[:, 2] - w[:, 1] <= seq_len)


def test_full_windows_only_and_overlapping_strides() -> None:
    recs = small_genomes()
    w = genome_windows(recs, 1000, split="all", pad_last=False, max_n_fraction=1.0)
    assert np.all(w[:, 2] - w[:, 1] == 1000)
    assert len(w) == sum(len(r) // 1000 for r in recs)
    w = genome_windows(recs, 1000, stride=300, split="all", max_n_fraction=1.0)
    for rec, cov in zip(recs, coverage(w, [len(r) for r in recs])):
        assert cov.min() >= 1 and cov.max() <= 4
    assert window_starts(0, 10, 4, 3).tolist() == [0, 3, 6]  # [6, 10) ends the region: no [9, 10)
    assert window_starts(0, 10, 4, 6).tolist() == [0, 6]  # stride > length leaves gaps


@pytest.mark.parametrize("stride", [None, 700])
def test_train_and_val_share_no_base(ecoli_records: list[EncodedRecord], stride) -> None:
    recs = small_genomes() + ecoli_records
    train = genome_windows(recs, 4096, stride, "train", 0.1, 1.0)
    val = genome_windows(recs, 4096, stride, "val", 0.1, 1.0)
    for r, rec in enumerate(recs):
        tr, va = train[train[:, 0] == r], val[val[:, 0] == r]
        assert len(tr) and len(va)
        assert tr[:, 2].max() <= va[:, 1].min()
        cut = split_bounds(len(rec), "train", 0.1)[1]
        assert tr[:, 2].max() <= cut <= va[:, 1].min() and abs(len(rec) - cut - 0.1 * len(rec)) <= 1
        assert np.all(coverage(tr, [len(rec)] * (r + 1))[r][:cut - 1] >= 1)  # train covers its region
        assert np.all(coverage(va, [len(rec)] * (r + 1))[r][cut:-1] >= 1)


def test_n_runs_and_counts_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    for trial in range(20):
        ids = np.where(rng.random(500) < rng.random(), N, 4).astype(np.uint8)
        starts, ends = ambiguous_runs(ids, (N,), chunk=int(rng.integers(1, 60)))
        flags = np.zeros(len(ids), bool)
        for s, e in zip(starts, ends):
            assert np.all(ids[s:e] == N) and (s == 0 or ids[s - 1] != N) and (e == len(ids) or ids[e] != N)
            flags[s:e] = True
        assert np.array_equal(flags, ids == N)
        lo = rng.integers(0, 500, 100)
        hi = np.minimum(lo + rng.integers(0, 120, 100), 500)
        assert count_in_runs(starts, ends, lo, hi).tolist() == [int((ids[a:b] == N).sum()) for a, b in zip(lo, hi)]


@pytest.mark.parametrize("max_n", [0.0, 0.1, 0.5, 1.0])
def test_n_filter_matches_brute_force(max_n: float) -> None:
    rec = with_n_blocks()
    w = genome_windows([rec], 256, stride=100, split="all", max_n_fraction=max_n)
    kept = {(s, e) for _, s, e in w}
    expected = set()
    for s in window_starts(0, len(rec), 256, 100):
        e = min(s + 256, len(rec))
        n = int((rec.ids[s:e] == N).sum())
        if n <= max_n * (e - s) and n < e - s:
            expected.add((s, e))
    assert kept == expected and (0 < len(kept) < len(window_starts(0, len(rec), 256, 100)) or max_n == 0)


# ---------------------------------------------------------------------- dataset
def test_items_are_the_genome_slices(ecoli_records: list[EncodedRecord]) -> None:
    recs = small_genomes() + ecoli_records
    ds = GenomeWindowDataset(recs, 8192, split="train", seed=3)
    n_rc = 0
    for i in range(len(ds)):
        item = ds[i]
        r, s, e = ds.windows[i]
        forward = np.asarray(recs[r].ids[s:e], dtype=np.int64)
        ids, mask = item["input_ids"].numpy(), item["attention_mask"].numpy()
        assert ids.shape == (8192,) and item["input_ids"].dtype == torch.long
        assert mask.sum() == e - s and mask[: e - s].all() and np.all(ids[e - s:] == NUC.pad_id)
        if ds.is_reverse_complemented(i):
            n_rc += 1
            assert np.array_equal(ids[: e - s], NUC.reverse_complement(forward))
        else:
            assert np.array_equal(ids[: e - s], forward)
    assert 0.35 < n_rc / len(ds) < 0.65


def test_augmentation_is_deterministic_and_off_for_validation() -> None:
    recs = small_genomes()
    a, b = GenomeWindowDataset(recs, 512, seed=1), GenomeWindowDataset(recs, 512, seed=1)
    flips = [a.is_reverse_complemented(i) for i in range(len(a))]
    assert flips == [b.is_reverse_complemented(i) for i in range(len(b))]
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(0, len(a), 7))
    assert flips != [GenomeWindowDataset(recs, 512, seed=2).is_reverse_complemented(i) for i in range(len(a))]
    a.set_epoch(1)
    assert flips != [a.is_reverse_complemented(i) for i in range(len(a))]
    val = GenomeWindowDataset(recs, 512, split="val")
    assert not val.rc_augment and not any(val.is_reverse_complemented(i) for i in range(len(val)))


# ---------------------------------------------------------------------- collators
def ragged_batch() -> list[dict]:
    """Items of different lengths with N inside, for the collators."""
    rng = np.random.default_rng(5)
    items = []
    for length in (50, 37, 50, 3):
        ids = rng.integers(4, 9, length)  # includes N (8)
        items.append({"input_ids": torch.from_numpy(ids), "key": int(rng.integers(1 << 40))})
    return items


def test_causal_labels_by_recomputation() -> None:
    items = ragged_batch()
    batch = CausalCollator(NUC)(items)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    B, L = batch["input_ids"].shape
    assert (B, L) == (4, 50) and batch["labels"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    for b, item in enumerate(items):
        ids = item["input_ids"].tolist()
        padded = ids + [NUC.pad_id] * (L - len(ids))
        assert batch["input_ids"][b].tolist() == padded
        assert batch["attention_mask"][b].tolist() == [True] * len(ids) + [False] * (L - len(ids))
        expected = [padded[t + 1] if t + 1 < len(ids) and padded[t + 1] in NUC.base_ids else IGNORE_INDEX
                    for t in range(L)]
        assert batch["labels"][b].tolist() == expected


def test_causal_collator_on_dataset_items() -> None:
    ds = GenomeWindowDataset([with_n_blocks()], 1000, max_n_fraction=1.0, rc_augment=False)
    batch = CausalCollator(NUC)([ds[i] for i in range(len(ds))])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    nxt_ok = mask[:, 1:] & (ids[:, 1:] >= 4) & (ids[:, 1:] <= 7)
    assert torch.equal(labels[:, :-1] != IGNORE_INDEX, nxt_ok)
    assert torch.equal(labels[:, :-1][nxt_ok], ids[:, 1:][nxt_ok])
    assert torch.all(labels[:, -1] == IGNORE_INDEX) and (~mask).any()


def check_masked(items: list[dict], batch: dict, mask_prob: float) -> np.ndarray:
    """Recheck every masked-LM rule; returns per-position categories (0 masked, 1 random, 2 kept)."""
    cats = []
    for b, item in enumerate(items):
        orig = np.asarray(item["input_ids"])
        L = len(orig)
        inp, lab = batch["input_ids"][b].numpy(), batch["labels"][b].numpy()
        assert np.all(inp[L:] == NUC.pad_id) and np.all(lab[L:] == IGNORE_INDEX)
        inp, lab = inp[:L], lab[:L]
        chosen = lab != IGNORE_INDEX
        candidates = np.isin(orig, NUC.base_ids)
        assert chosen.sum() == round(mask_prob * candidates.sum())
        assert not np.any(chosen & ~candidates)  # N and padding never chosen
        assert np.array_equal(lab[chosen], orig[chosen])
        assert np.array_equal(inp[~chosen], orig[~chosen])
        c = np.where(inp[chosen] == NUC.mask_id, 0, np.where(inp[chosen] == orig[chosen], 2, 1))
        assert np.all(np.isin(inp[chosen][c == 1], NUC.base_ids))
        cats.append(c)
    return np.concatenate(cats)


def test_masked_rules_by_recomputation(ecoli_records: list[EncodedRecord]) -> None:
    items = ragged_batch()
    batch = MaskedCollator(NUC, seed=0)(items)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    check_masked(items, batch, 0.15)
    # the 80/10/10 split, over ~60k chosen positions of E. coli windows
    ds = GenomeWindowDataset(ecoli_records, 4096, rc_augment=False)
    items = [ds[i] for i in range(100)]
    items = [{"input_ids": it["input_ids"], "key": it["key"]} for it in items]
    cats = check_masked(items, MaskedCollator(NUC)(items), 0.15)
    share = np.bincount(cats, minlength=3) / len(cats)
    # A "random base" draw is uniform over A, C, G, T, so a quarter of the 10% equal the original
    # and count as kept: changed 7.5%, kept 10% + 2.5%.
    assert len(cats) > 50_000
    assert abs(share[0] - 0.8) < 0.01 and abs(share[1] - 0.075) < 0.006 and abs(share[2] - 0.125) < 0.006


def test_masked_is_deterministic_per_key() -> None:
    items = ragged_batch()
    a, b = MaskedCollator(NUC, seed=0)(items), MaskedCollator(NUC, seed=0)(items[::-1])
    assert torch.equal(a["input_ids"][0], b["input_ids"][3][:50]) and torch.equal(a["labels"][1], b["labels"][2])
    c = MaskedCollator(NUC, seed=1)(items)
    assert not torch.equal(a["labels"], c["labels"])


@pytest.mark.parametrize("span", [3, 8])
def test_span_masking(span: int) -> None:
    rng = np.random.default_rng(6)
    ids = rng.integers(4, 8, 20000)
    ids[5000:5400] = N
    candidates = np.isin(ids, NUC.base_ids)
    pos = choose_mask_positions(candidates, 0.15, span, rng)
    assert len(pos) == round(0.15 * candidates.sum()) and len(np.unique(pos)) == len(pos)
    assert candidates[pos].all()
    runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
    mean_run = np.mean([len(r) for r in runs])
    assert 0.7 * span < mean_run < 2.0 * span, mean_run
    single = choose_mask_positions(candidates, 0.15, 1, rng)
    assert np.mean([len(r) for r in np.split(single, np.flatnonzero(np.diff(single) != 1) + 1)]) < 1.3
    items = [{"input_ids": torch.from_numpy(ids), "key": 7}]
    check_masked(items, MaskedCollator(NUC, mask_span=span)(items), 0.15)


def test_byte_tokenizer_windows_and_collation() -> None:
    recs = load_genome(DATA / "phiX174_NC_001422.1.fa", ByteTokenizer())
    ds = GenomeWindowDataset(recs, 1024, tokenizer=ByteTokenizer(), rc_augment=False)
    batch = CausalCollator(ByteTokenizer())([ds[0]])
    assert ByteTokenizer().decode(batch["input_ids"][0]) == next(iter(_phix_text()))[:1024]
    assert torch.equal(batch["labels"][0, :-1], batch["input_ids"][0, 1:])


def _phix_text():
    from reformer_seq.genome.fasta import read_records
    return (r.sequence for r in read_records(DATA / "phiX174_NC_001422.1.fa"))


# ---------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n,world", [(103, 1), (103, 2), (103, 4), (100, 4), (3, 4), (0, 2)])
def test_sharded_sampler_is_disjoint_and_even(n: int, world: int) -> None:
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            s = ShardedSampler(n, shuffle=True, seed=9, rank=rank, world_size=world)
            s.set_epoch(epoch)
            idx = list(s)
            assert len(idx) == len(s) and idx == list(s)  # deterministic
            shards.append(idx)
        assert len({len(x) for x in shards}) == 1  # same count on every rank
        flat = [i for x in shards for i in x]
        if n >= world:
            assert len(set(flat)) == len(flat) == n - n % world  # disjoint, only the remainder dropped
        else:
            assert set(flat) == set(range(n))
    uneven = [list(ShardedSampler(n, False, rank=r, world_size=world, even=False)) for r in range(world)]
    assert sorted(i for x in uneven for i in x) == list(range(n))


def test_dataloader_shards_and_epochs() -> None:
    ds = GenomeWindowDataset(small_genomes(), 512, seed=2)
    world, seen = 3, []
    for rank in range(world):
        loader = make_dataloader(ds, 4, CausalCollator(NUC), seed=5, rank=rank, world_size=world)
        seen.append(list(loader.sampler))
        first = next(iter(loader))
        expected = CausalCollator(NUC)([ds[i] for i in seen[-1][:4]])
        assert all(torch.equal(first[k], expected[k]) for k in expected)
    assert not set(seen[0]) & set(seen[1]) and not set(seen[1]) & set(seen[2]) and not set(seen[0]) & set(seen[2])
    loader = make_dataloader(ds, 4, CausalCollator(NUC), seed=5)  # no torch.distributed: everything
    assert sorted(loader.sampler) == list(range(len(ds)))
    order0 = list(loader.sampler)
    set_epoch(loader, 1)
    assert list(loader.sampler) != order0 and ds.epoch == 1
    val = GenomeWindowDataset(small_genomes(), 512, split="val")
    assert list(make_dataloader(val, 4, CausalCollator(NUC)).sampler) == list(range(len(val)))


def test_workers_give_the_same_batches() -> None:
    ds = GenomeWindowDataset(small_genomes(), 2048, seed=4)
    collate = MaskedCollator(NUC, mask_span=2)
    a = list(make_dataloader(ds, 3, collate, seed=1, num_workers=0))
    b = list(make_dataloader(ds, 3, collate, seed=1, num_workers=2))
    assert len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_datasets_from_config() -> None:
    cfg = DataConfig(seq_len=2048, val_fraction=0.2, rc_augment=True)
    train, val = datasets_from_config([str(ECOLI), DATA / "phiX174_NC_001422.1.fa"], cfg, seed=1)
    assert train.rc_augment and not val.rc_augment and len(train.records) == 2
    assert len(train) > 3 * len(val) > 0
