"""benchmarks/variant_effects.py: its AUROC against a brute-force pairwise count, and its sample's checks."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("variant_effects_study", REPO / "benchmarks" / "variant_effects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def brute_force_auroc(damaging, benign) -> float:
    """P(damaging < benign) + 0.5 P(tie) over every pair."""
    wins = sum((d < b) + 0.5 * (d == b) for d in damaging for b in benign)
    return wins / (len(damaging) * len(benign))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_the_pairwise_count_with_ties(study, seed):
    rng = np.random.default_rng(seed)
    damaging = np.round(rng.normal(-0.5, 1, 37), 1)  # rounded: many ties, across and within classes
    benign = np.round(rng.normal(0, 1, 53), 1)
    assert study.auroc(damaging, benign) == pytest.approx(brute_force_auroc(damaging, benign), abs=1e-12)
    assert study.auroc(np.array([-1.0, -2.0]), np.array([0.0, 1.0])) == 1.0  # more negative = damaging
    assert study.auroc(np.zeros(3), np.zeros(4)) == 0.5


def test_the_sample_is_checked_and_written(study, tmp_path):
    import pysam

    from reformer_seq.genome.annotation import read_cds
    from reformer_seq.genome.fasta import read_records
    from reformer_seq.tasks.scoring.coding_snvs import coding_snvs

    seq = next(read_records(study.SLICE)).sequence.upper()
    (genes,) = read_cds(study.SLICE).values()
    picked = study.sample(coding_snvs(seq, genes), 20, seed=3)
    counts = study.check_sample(picked, seq)
    assert sum(counts[c]["+"] + counts[c]["-"] for c in study.CLASSES) == 60
    assert all(counts[c]["-"] > 0 for c in study.CLASSES)
    study.write_vcf(picked, tmp_path / "s.vcf", len(seq))
    with pysam.VariantFile(str(tmp_path / "s.vcf")) as vf:
        recs = list(vf)
    assert len(recs) == 60 and all(seq[r.pos - 1] == r.ref != r.alts[0] for r in recs)
    broken = [picked[0].__class__(**{**picked[0].__dict__, "alt": picked[0].ref})]
    with pytest.raises(AssertionError, match="ALT == REF"):
        study.check_sample(broken, seq)
