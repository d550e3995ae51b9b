"""The dinucleotide shuffle (genome/shuffle.py): every shuffle keeps the dinucleotide counts and
the end bases, and draws uniformly among the sequences that have them (Altschul & Erickson 1985)."""
from __future__ import annotations

import numpy as np


def test_dinucleotide_shuffle_keeps_pairs_and_is_uniform():
    from collections import Counter

    from reformer_seq.genome.shuffle import dinucleotide_shuffle

    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 200, p=[.1, .4, .4, .1]))
    pairs = Counter(zip(seq, seq[1:]))
    outs = [dinucleotide_shuffle(seq, rng) for _ in range(50)]
    for s in outs:
        assert Counter(zip(s, s[1:])) == pairs and s[0] == seq[0] and s[-1] == seq[-1]
    assert len(set(outs)) == 50 and seq not in outs
    # uniform over the Eulerian paths: "ACAGA" has exactly two (ACAGA, AGACA), each drawn half the time
    draws = Counter(dinucleotide_shuffle("ACAGA", rng) for _ in range(2000))
    assert set(draws) == {"ACAGA", "AGACA"} and abs(draws["ACAGA"] - 1000) < 100
