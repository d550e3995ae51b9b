"""The long-context study's pieces: the copy test's construction, the repeat finder (against
brute force) and the copy-model baseline (against hand-worked examples)."""
import numpy as np
import pytest

from reformer_seq.tasks.evaluation.markov import MarkovModel, Segment
from reformer_seq.tasks.recall import (CONTROL_MATCH_K, CopyModel, copy_predictions, diverge, recall_pair,
                                       repeat_positions, repeat_positions_brute, reverse_complement, shares_kmer)
from reformer_seq.genome.tokenizers import NucleotideTokenizer

TOK = NucleotideTokenizer()


def enc(s: str) -> np.ndarray:
    return TOK.encode(s).astype(np.int64)


def random_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 8, n).astype(np.int64)


@pytest.mark.parametrize("reverse", [False, True])
def test_recall_pair_repeats_only_in_the_repeat(reverse):
    genome = random_ids(50_000, 1)
    genome[1000:1100] = 8  # an N run the segments must avoid
    pair = recall_pair(genome, m=256, distance=2000, rng=np.random.default_rng(0), prefix=512, reverse=reverse)
    m, L = pair.m, len(pair.repeat)
    assert L == len(pair.control) == 512 + 256 + 2000 + 256
    last = pair.repeat[-m:]
    first = pair.repeat[512:512 + m]
    assert np.array_equal(pair.control[-m:], last)  # the scored segment is the same in both
    assert np.array_equal(pair.repeat[:512], pair.control[:512])  # same prefix
    assert np.array_equal(pair.repeat[512 + m:-m], pair.control[512 + m:-m])  # same filler
    expect = reverse_complement(first) if reverse else first
    assert np.array_equal(last, expect)  # S' really repeats S
    # the repeat really repeats and the control really does not: with S' read on the strand of
    # its first copy, every base after the first 16 follows a 16-mer seen earlier only in the repeat
    probe = (lambda x: reverse_complement(x)) if reverse else (lambda x: x)
    rep = repeat_positions(np.concatenate([pair.repeat[:-m], probe(last)]), w=16)[-m + 16:]
    ctl = repeat_positions(np.concatenate([pair.control[:-m], probe(last)]), w=16)[-m + 16:]
    assert rep.all() and not ctl.any()
    assert (pair.repeat != 8).all() and (pair.control != 8).all()


def test_a_far_filler_comes_from_the_filler_and_the_rest_from_the_held_out_region():
    """--far-filler: a distance the held-out region cannot hold four times over (here 30,000 bases
    from 20,000) takes F from the training split; S, C, P and so S' still come from the held-out ids."""
    held, train = random_ids(20_000, 2), random_ids(200_000, 3)
    with pytest.raises(ValueError, match="could not find"):
        recall_pair(held, m=256, distance=30_000, rng=np.random.default_rng(0), prefix=512)
    pair = recall_pair(held, m=256, distance=30_000, rng=np.random.default_rng(0), prefix=512, filler=train)
    F = pair.repeat[512 + 256:-256]
    assert len(F) == 30_000 and np.array_equal(F, pair.control[512 + 256:-256])
    text = lambda a: a.tobytes()  # noqa: E731
    assert text(F) in text(train) and text(pair.repeat[512:768]) in text(held)  # S from held-out, F from train
    assert text(pair.repeat[:512]) in text(held) and text(pair.control[512:768]) in text(held)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3])
def test_diverged_copy_differs_at_the_stated_rate(reverse, rate):
    genome = random_ids(60_000, 2)
    # a repetitive genome: 40 copies of one 400-base element, so chance matches in the control are common
    element = random_ids(400, 9)
    for at in np.random.default_rng(1).choice(140, 40, replace=False):
        genome[at * 420:at * 420 + 400] = element
    rng = np.random.default_rng(int(rate * 100))
    for _ in range(5):
        pair = recall_pair(genome, m=500, distance=3000, rng=rng, prefix=512, reverse=reverse, divergence=rate)
        m = pair.m
        assert m == 500 and pair.divergence == rate
        first, last = pair.repeat[512:512 + m], pair.repeat[-m:]
        same_strand = reverse_complement(last) if reverse else last
        assert int((same_strand != first).sum()) == round(rate * m)  # exactly the stated rate, all real changes
        assert np.array_equal(pair.control[-m:], last)  # the control ends with the same diverged copy
        if rate <= 0.2:  # 0.8 ** 12 = 7% of 12-mers survive; at 30% some copies keep none
            assert shares_kmer(pair.repeat[:-m], last, 12)  # the repeat still holds the (diverged) copy
        assert not shares_kmer(pair.control[:-m], last, CONTROL_MATCH_K)  # the control no long match


def test_shares_kmer_against_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(30):
        a, b = random_ids(60, trial), random_ids(40, 100 + trial)
        if trial % 3 == 0:
            b[5:15] = a[20:30]
        elif trial % 3 == 1:
            b[10:20] = reverse_complement(a[30:40])
        k = int(rng.integers(6, 11))
        words = {tuple(a[i:i + k]) for i in range(61 - k)} | {tuple(reverse_complement(a)[i:i + k]) for i in range(61 - k)}
        want = any(tuple(b[i:i + k]) in words for i in range(41 - k))
        assert shares_kmer(a, b, k) == want


def test_diverge_with_indels_changes_length_and_keeps_most_bases():
    seg = random_ids(1000, 4)
    out, n = diverge(seg, np.random.default_rng(0), 0.0, 0.02)
    assert n == 20 and len(out) != 1000 and abs(len(out) - 1000) <= 60
    assert shares_kmer(seg, out, 20)
    with pytest.raises(ValueError, match="rates"):
        diverge(seg, np.random.default_rng(0), 1.5)


def test_reverse_complement_ids():
    assert np.array_equal(reverse_complement(enc("AACGTN")), enc("NACGTT"))


@pytest.mark.parametrize("mm", [0, 1, 2])
def test_repeat_positions_matches_brute_force(mm):
    rng = np.random.default_rng(mm)
    ids = random_ids(600, 3 + mm)
    for _ in range(4):  # planted copies with a few substitutions, some N
        src, dst, n = rng.integers(0, 250), rng.integers(300, 540), rng.integers(20, 60)
        seg = ids[src:src + n].copy()
        hit = rng.random(n) < 0.04
        seg[hit] = rng.integers(4, 8, hit.sum())
        ids[dst:dst + n] = seg
    ids[rng.integers(0, 600, 5)] = 8
    fast = repeat_positions(ids, w=12, max_mismatches=mm)
    assert fast.sum() > 10  # the planted copies were found
    assert np.array_equal(fast, repeat_positions_brute(ids, w=12, max_mismatches=mm))


def test_copy_predictions_hand_worked():
    #          0123456789
    ids = enc("ACGTACGTTA")
    pred = copy_predictions(ids, 3)
    assert pred[7] == enc("T")[0]  # ids[4:7] = ACG, seen at 0..2 and followed by T
    assert pred[8] == enc("A")[0]  # ids[5:8] = CGT, seen at 1..3 and followed by A
    assert pred[9] == -1  # GTT was never seen
    assert (pred[:7] == -1).all()
    #                   012345678
    pred2 = copy_predictions(enc("ACGACTACA"), 2)
    assert pred2[5] == enc("G")[0]  # AC at 3..4: the earlier AC (0..1) was followed by G
    assert pred2[8] == enc("T")[0]  # AC at 6..7: the most recent earlier AC (3..4) was followed by T


def test_copy_model_mixes_by_fitted_weight():
    train = [random_ids(3000, 7)]
    seg = train[0][100:400].copy()
    train[0][2000:2300] = seg  # one exact repeat in training: the long suffixes are right
    markov = MarkovModel.fit([Segment(w) for w in train], 2)
    cm = CopyModel(markov, orders=(16, 12)).fit(train)
    assert cm.weights[16] > 0.9  # a 16-base match predicted its next base almost always
    test = random_ids(2000, 9)
    test[1500:1700] = test[200:400]
    pos = np.arange(1530, 1690)
    bits = cm.bits(test, pos)
    lp, _ = markov.score(test, pos)
    w = cm.weights[16]
    # hand-worked: inside the copy the prediction is right, p = w + (1 - w) p_markov
    assert np.allclose(bits, -np.log2(w + (1 - w) * 2.0 ** lp))
    assert bits.mean() < 0.2


def test_copy_predictions_reverse_complement_hand_worked():
    #          0123456789
    ids = enc("TCAAGGTTGA")
    # position 9: suffix ids[6:9] = TTG, revcomp = CAA at 1..3; the base before it (0) is T,
    # whose complement A is the prediction (an inverted repeat continues leftwards)
    pred = copy_predictions(ids, 3, reverse=True)
    assert pred[9] == enc("A")[0]
    assert copy_predictions(ids, 3)[9] == -1  # no direct occurrence


def test_copy_predictions_against_brute_force():
    rng = np.random.default_rng(11)
    ids = rng.integers(4, 8, 400).astype(np.int64)
    ids[300:340] = reverse_complement(ids[50:90])
    ids[200:240] = ids[10:50]
    comp = {4: 7, 5: 6, 6: 5, 7: 4}
    for k in (4, 6):
        for rev in (False, True):
            fast = copy_predictions(ids, k, rev)
            for t in range(k, len(ids)):
                u = ids[t - k:t]
                want = -1
                for s in range(t - k - 1, -1, -1):  # most recent start s < t - k
                    cand = ids[s:s + k]
                    if rev and s >= 1 and np.array_equal(reverse_complement(cand), u):
                        want = comp[int(ids[s - 1])]
                        break
                    if not rev and np.array_equal(cand, u):
                        want = int(ids[s + k])
                        break
                assert fast[t] == want, (k, rev, t)


def test_tolerant_copy_model_follows_a_diverged_copy():
    from reformer_seq.tasks.tolerant_copy import TolerantCopyModel

    genome = random_ids(40_000, 11)
    markov = MarkovModel.fit([Segment(genome[:20_000])], 2)
    train = [recall_pair(genome[:20_000], 400, 2000, np.random.default_rng(s), prefix=256, reverse=bool(s % 2),
                         divergence=0.1 * (s % 3)) for s in range(6)]
    tol = TolerantCopyModel(markov).fit([(p.repeat, len(p.repeat) - p.m, len(p.repeat)) for p in train])
    exact = CopyModel(markov, orders=(12,)).fit([p.repeat for p in train])
    assert tol.weights[-1] > 0.8  # a run of hits is trusted
    for reverse in (False, True):
        pair = recall_pair(genome[20_000:], 400, 2000, np.random.default_rng(99), prefix=256, reverse=reverse,
                           divergence=0.1)
        lo = len(pair.repeat) - pair.m
        pred, _ = tol.walk(pair.repeat, lo, len(pair.repeat))
        right = pred[20:] == pair.repeat[lo + 20:]
        assert 0.8 < right.mean() < 0.95  # follows the copy: right where the copy was not substituted
        pos = np.arange(lo, len(pair.repeat))
        gain_tol = tol.bits(pair.control, pos).mean() - tol.bits(pair.repeat, pos).mean()
        gain_exact = exact.bits(pair.control, pos).mean() - exact.bits(pair.repeat, pos).mean()
        assert gain_tol > 1.0 > gain_exact + 0.5, (gain_tol, gain_exact)
        ctl_pred, _ = tol.walk(pair.control, lo, len(pair.repeat))
        assert (ctl_pred >= 0).mean() < 0.05  # nothing to follow in the control
