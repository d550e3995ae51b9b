"""Motif masking: how well a model predicts the bases of transcription-factor binding sites.

Each motif's PSSM scans the sequences on both strands (:mod:`reformer_seq.tasks.motifs`);
overlapping hits of a motif are reduced to the best one. For each site (up to ``max_sites`` per
motif, a seeded random subset beyond) a window of ``motif_window`` bases centred on it is scored
(:func:`~reformer_seq.tasks.evaluation.likelihood.span_window`): a masked model sees the whole site
masked, a causal model scores each site base from its left context. The same is done for one
control span per site (:class:`_ControlPicker`): the same length, in the same record, overlapping
no site of any motif and no N, with the GC count closest to the site's (exactly matched where
possible, ties broken at random). True versus shuffled: the site's bases are permuted (seeded); a
causal model compares the window's log-likelihood with the real and the shuffled site (the bases
before the site are identical, so the sum runs from the site's start to the window's end), a masked
model compares ``log p(site bases | flanks)`` with the site masked. A win is real > shuffled, a tie
counts half; the p-value is a one-sided sign test (binomial tail at 1/2, ties dropped). Per motif
position (motif orientation) the site accuracy is reported beside the column's information content
(bits, relative entropy to the background); :mod:`~reformer_seq.tasks.evaluation.report` draws it.

:func:`motif_masking` runs it in steps: scan (:func:`_scan_motifs`), pick sites, shuffles and
controls (:func:`_plan_jobs`), score (:func:`_score_jobs`), summarise (:func:`_motif_result`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ...errors import InputError
from ...genome.encoded import EncodedRecord
from ...genome.tokenizers import MASK_ID
from ..motifs import (DEFAULT_PSEUDOCOUNT, PSSM, Motif, ScanIndex, Site, Threshold, background_from_records,
                      make_pssm, non_overlapping, scan_records)
from .likelihood import LN2, Query, ScoringModel, check_objective, is_base, run_queries, span_window

DEFAULT_MOTIF_WINDOW = 512
DEFAULT_MAX_SITES = 1000


def sign_test_pvalue(wins: int, losses: int) -> float:
    """One-sided sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2); ties are left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    if wins <= 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * LN2 for i in range(wins, n + 1)]
    m = max(logs)
    return float(min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs)))


class _ControlPicker:
    """GC-matched control spans: same record and length, no site of any motif, no N."""

    def __init__(self, records: Sequence[EncodedRecord], occupied: Sequence[np.ndarray], rng: np.random.Generator,
                 min_start: int) -> None:
        self.records, self.occupied, self.rng, self.min_start = records, occupied, rng, min_start
        self._cache: dict[tuple[int, int], tuple[np.ndarray, list[np.ndarray]]] = {}

    def _groups(self, ri: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
        key = (ri, w)
        if key not in self._cache:
            ids = np.asarray(self.records[ri].ids)
            n = len(ids) - w + 1
            if n <= 0:
                self._cache[key] = (np.zeros(0, np.int64), [])
            else:
                gc = np.concatenate([[0], np.cumsum((ids == 5) | (ids == 6))])
                bad = np.concatenate([[0], np.cumsum(~is_base(ids) | self.occupied[ri])])
                starts = np.arange(n)
                ok = (bad[starts + w] - bad[starts] == 0) & (starts >= self.min_start)
                g = (gc[starts + w] - gc[starts])[ok]
                st = starts[ok]
                groups = [st[g == v] for v in range(w + 1)]
                self._cache[key] = (np.array([len(x) for x in groups]), groups)
        return self._cache[key]

    def pick(self, site: Site) -> Optional[tuple[int, bool]]:
        """``(start, exactly GC-matched)`` of a control for ``site``, or None when the record has no room."""
        w = site.end - site.start
        sizes, groups = self._groups(site.record_index, w)
        if not len(groups) or sizes.sum() == 0:
            return None
        ids = np.asarray(self.records[site.record_index].ids[site.start:site.end])
        g = int(((ids == 5) | (ids == 6)).sum())
        avail = np.flatnonzero(sizes > 0)
        d = np.abs(avail - g)
        v = int(avail[self.rng.choice(np.flatnonzero(d == d.min()))])
        return int(self.rng.choice(groups[v])), v == g


def _shuffle_site(bases: np.ndarray, rng: np.random.Generator, tries: int = 20) -> np.ndarray:
    """A permutation of ``bases`` that differs from it when any does (else ``bases`` itself)."""
    if len(np.unique(bases)) < 2:
        return bases.copy()
    for _ in range(tries):
        p = rng.permutation(bases)
        if not np.array_equal(p, bases):
            return p
    return p



def _site_queries(rec: EncodedRecord, site: Site, shuffled: np.ndarray, window: int, objective: str
                  ) -> list[Query]:
    """Queries for one site: [site(+shuffled targets)] for masked, [real, shuffled] windows for causal."""
    causal = objective == "causal"
    lo, hi = span_window(len(rec), site.start, site.end, window, causal)
    tokens = np.asarray(rec.ids[lo:hi]).astype(np.int64)
    s, e = site.start - lo, site.end - lo
    if not causal:
        inp = tokens.copy()
        inp[s:e] = MASK_ID
        pos = np.arange(s, e)
        return [Query(inp, pos, np.stack([tokens[s:e], shuffled]))]
    pos = np.arange(s, len(tokens))
    pos = pos[is_base(tokens[pos])]  # the site is all bases; later N are skipped
    shuf = tokens.copy()
    shuf[s:e] = shuffled
    return [Query(tokens, pos, tokens[pos][None]), Query(shuf, pos, shuf[pos][None])]


def _control_query(rec: EncodedRecord, start: int, w: int, window: int, objective: str) -> Query:
    causal = objective == "causal"
    lo, hi = span_window(len(rec), start, start + w, window, causal)
    tokens = np.asarray(rec.ids[lo:hi]).astype(np.int64)
    s = start - lo
    pos = np.arange(s, s + w)
    inp = tokens if causal else tokens.copy()
    if not causal:
        inp[pos] = MASK_ID
    return Query(inp, pos, tokens[pos][None])



@dataclass
class _SiteJob:
    motif: int
    site: Site
    site_len: int  # number of site targets at the front of the causal query
    shuffled: np.ndarray
    control: int = -1  # start of the site's control span (-1: none)
    gc_matched: bool = False  # whether the control's GC count equals the site's


@dataclass
class _Scan:
    """What scanning found: per motif its PSSM, score cut and non-overlapping sites; per record
    ``occupied`` (L_r,) bool marks every hit of every motif (controls avoid them)."""

    pssms: list[PSSM]
    cuts: list[float]
    found: list[list[Site]]
    occupied: list[np.ndarray]


@dataclass
class _Tally:
    """One motif's scored sites and controls, accumulated site by site."""

    site_correct: list[np.ndarray] = field(default_factory=list)
    site_logp: list[np.ndarray] = field(default_factory=list)
    ctrl_correct: list[np.ndarray] = field(default_factory=list)
    ctrl_logp: list[np.ndarray] = field(default_factory=list)
    wins: int = 0
    losses: int = 0
    ties: int = 0
    gc_matched: int = 0
    n_controls: int = 0
    n_evaluated: int = 0
    controls: list[tuple[int, int, int, Site]] = field(default_factory=list)

    def add_site(self, job: _SiteJob, site_lp: np.ndarray, site_corr: np.ndarray, real_ll: float, shuf_ll: float,
                 site_bases: np.ndarray) -> None:
        """One site's per-base scores and its true-vs-shuffled outcome (a tie when the shuffle changed nothing)."""
        if job.site.strand == "-":  # motif orientation
            site_lp, site_corr = site_lp[::-1], site_corr[::-1]
        self.site_logp.append(site_lp)
        self.site_correct.append(site_corr)
        self.n_evaluated += 1
        diff = real_ll - shuf_ll
        if np.array_equal(job.shuffled, site_bases) or abs(diff) <= 1e-9 * max(1.0, abs(real_ll)):
            self.ties += 1
        elif diff > 0:
            self.wins += 1
        else:
            self.losses += 1

    def add_control(self, job: _SiteJob, logp: np.ndarray, correct: np.ndarray) -> None:
        self.controls.append((job.site.record_index, job.control, job.control + job.site_len, job.site))
        self.ctrl_logp.append(logp)
        self.ctrl_correct.append(correct)
        self.n_controls += 1
        self.gc_matched += int(job.gc_matched)


def motif_masking(records: Sequence[EncodedRecord], scorer: ScoringModel, motifs: Sequence[Motif],
                  threshold: Union[Threshold, str, float, None] = None, background: Optional[np.ndarray] = None,
                  window: int = DEFAULT_MOTIF_WINDOW, batch_size: int = 8, max_sites: Optional[int] = DEFAULT_MAX_SITES,
                  pseudocount: float = DEFAULT_PSEUDOCOUNT, seed: int = 0, progress: bool = True
                  ) -> list[dict[str, Any]]:
    """Per-motif site/control accuracy and bits, true-vs-shuffled test and per-position profile.

    Returns one dict per motif (in the order given; a motif without sites has ``n_sites`` 0 and
    null metrics). See the module docstring for the protocol.
    """
    objective = scorer.objective
    check_objective(objective)
    causal = objective == "causal"
    threshold = Threshold.parse(threshold)
    bg = background if background is not None else background_from_records(records)
    window = int(min(window, scorer.max_len))
    rng = np.random.default_rng(seed)
    scan = _scan_motifs(records, motifs, threshold, bg, window, pseudocount, progress)
    picker = _ControlPicker(records, scan.occupied, rng, min_start=1 if causal else 0)
    jobs = _plan_jobs(records, scan.found, picker, rng, max_sites, causal)
    tallies = _score_jobs(records, scorer, jobs, len(motifs), window, batch_size, progress)
    return [_motif_result(m, tallies[mi], scan.pssms[mi], scan.cuts[mi], scan.found[mi], threshold, bg, pseudocount,
                          len(records)) for mi, m in enumerate(motifs)]


def _scan_motifs(records: Sequence[EncodedRecord], motifs: Sequence[Motif], threshold: Threshold, bg: np.ndarray,
                 window: int, pseudocount: float, progress: bool) -> _Scan:
    """Each motif's PSSM, cut and non-overlapping sites; every hit marked occupied."""
    from tqdm.auto import tqdm

    scan = _Scan([], [], [], [np.zeros(len(r), dtype=bool) for r in records])
    index = ScanIndex.build(records)
    for m in tqdm(motifs, desc="scanning motifs", unit="motif", leave=False, dynamic_ncols=True,
                  disable=not progress or len(motifs) < 5):
        if m.length + 1 > window:
            raise InputError(f"motif {m.label} is {m.length} bases long; the {window}-base scoring window must be "
                             f"longer; raise the motif window (--motif-window)")
        p = make_pssm(m, bg, pseudocount)
        scan.pssms.append(p)
        scan.cuts.append(threshold.score_for(p))
        hits = scan_records(records, p, scan.cuts[-1], index=index)  # the cut in bits: computed once
        for s in hits:  # controls avoid every hit of every motif
            scan.occupied[s.record_index][s.start:s.end] = True
        scan.found.append(non_overlapping(hits))
    return scan


def _plan_jobs(records: Sequence[EncodedRecord], found: Sequence[Sequence[Site]], picker: _ControlPicker,
               rng: np.random.Generator, max_sites: Optional[int], causal: bool) -> list[_SiteJob]:
    """The sites to score (a seeded subset beyond ``max_sites``), each with its shuffle and control."""
    jobs: list[_SiteJob] = []
    for mi, sites in enumerate(found):
        usable = [s for s in sites if not causal or s.start >= 1]
        if max_sites is not None and len(usable) > max_sites:
            keep = np.sort(rng.choice(len(usable), size=max_sites, replace=False))
            usable = [usable[i] for i in keep]
        for s in usable:
            rec = records[s.record_index]
            bases = np.asarray(rec.ids[s.start:s.end]).astype(np.int64)
            job = _SiteJob(mi, s, s.end - s.start, _shuffle_site(bases, rng))
            c = picker.pick(s)
            if c is not None:
                job.control, job.gc_matched = c
            jobs.append(job)
    return jobs


def _score_jobs(records: Sequence[EncodedRecord], scorer: ScoringModel, jobs: Sequence[_SiteJob], n_motifs: int,
                window: int, batch_size: int, progress: bool) -> list[_Tally]:
    """Score every site (real and shuffled) and control; the tallies, one per motif."""
    objective = scorer.objective
    causal = objective == "causal"

    def queries() -> Iterator[Query]:  # built as they are scored: memory stays one batch deep
        for job in jobs:
            rec = records[job.site.record_index]
            yield from _site_queries(rec, job.site, job.shuffled, window, objective)
            if job.control >= 0:
                yield _control_query(rec, job.control, job.site_len, window, objective)

    total = len(jobs) * (2 if causal else 1) + sum(job.control >= 0 for job in jobs)
    results = iter(run_queries(scorer, queries(), batch_size, total=total, desc="motif sites", progress=progress))
    tallies = [_Tally() for _ in range(n_motifs)]
    for job in jobs:
        w = job.site_len
        if causal:
            lp_real, corr_real = next(results)
            lp_shuf, _ = next(results)
            site_lp, site_corr = lp_real[0, :w], corr_real[0, :w]
            real_ll, shuf_ll = float(lp_real.sum()), float(lp_shuf.sum())
        else:
            lp, corr = next(results)
            site_lp, site_corr = lp[0], corr[0]
            real_ll, shuf_ll = float(lp[0].sum()), float(lp[1].sum())
        site_bases = np.asarray(records[job.site.record_index].ids[job.site.start:job.site.end])
        tallies[job.motif].add_site(job, site_lp, site_corr, real_ll, shuf_ll, site_bases)
        if job.control >= 0:
            lp, corr = next(results)
            tallies[job.motif].add_control(job, lp[0], corr[0])
    return tallies


def _motif_result(m: Motif, a: _Tally, p: PSSM, cut: float, sites: Sequence[Site], threshold: Threshold,
                  bg: np.ndarray, pseudocount: float, n_records: int) -> dict[str, Any]:
    """One motif's report entry from its tally (``_sites``/``_controls`` stay out of report.json)."""
    ic = m.information_content(bg, pseudocount)
    r: dict[str, Any] = {
        "id": m.id, "name": m.name, "length": m.length, "source": m.source, "consensus": m.consensus(),
        "threshold": str(threshold), "threshold_score": _finite(cut), "max_score": round(p.max_score, 4),
        "n_sites": len(sites), "n_plus": sum(s.strand == "+" for s in sites),
        "n_minus": sum(s.strand == "-" for s in sites),
        "n_records_with_site": len({s.record_index for s in sites}),
        "fraction_records_with_site": len({s.record_index for s in sites}) / max(1, n_records),
        "n_evaluated": a.n_evaluated, "n_controls": a.n_controls,
        "control_gc_matched_fraction": a.gc_matched / a.n_controls if a.n_controls else None,
        "site_accuracy": None, "control_accuracy": None, "site_bits_per_base": None, "control_bits_per_base": None,
        "true_vs_shuffled_win_rate": None, "n_wins": a.wins, "n_losses": a.losses, "n_ties": a.ties,
        "p_value": None,
        "per_position": {"information_content": [round(float(v), 4) for v in ic],
                         "site_accuracy": None, "site_bits_per_base": None},
    }
    if a.n_evaluated:
        sc = np.stack(a.site_correct)  # (n, W)
        sl = np.stack(a.site_logp)
        r["site_accuracy"] = float(sc.mean())
        r["site_bits_per_base"] = float(-sl.mean() / LN2)
        r["per_position"]["site_accuracy"] = [round(float(v), 5) for v in sc.mean(0)]
        r["per_position"]["site_bits_per_base"] = [round(float(v), 5) for v in -sl.mean(0) / LN2]
        n = a.wins + a.losses + a.ties
        r["true_vs_shuffled_win_rate"] = (a.wins + 0.5 * a.ties) / n
        r["p_value"] = sign_test_pvalue(a.wins, a.losses)
    if a.n_controls:
        r["control_accuracy"] = float(np.concatenate(a.ctrl_correct).mean())
        r["control_bits_per_base"] = float(-np.concatenate(a.ctrl_logp).mean() / LN2)
    if not math.isfinite(cut):
        best_p = float(p.pvalue_of(np.array([p.max_score]))[0])
        r["note"] = (f"no window can pass {threshold}: the best possible p-value of this {m.length}-base motif "
                     f"is {best_p:.2g}; loosen --threshold (e.g. p:1e-4)")
    r["_sites"] = sites  # underscore keys stay out of report.json; they let callers list sites and controls
    r["_controls"] = a.controls  # (record index, start, end, the site it controls for)
    return r


def _finite(x: float) -> Optional[float]:
    return round(float(x), 4) if math.isfinite(x) else None
