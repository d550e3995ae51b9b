"""Dinucleotide-preserving shuffles (Altschul & Erickson, Mol. Biol. Evol. 2:526, 1985).

A sequence is an Eulerian path through the graph whose vertices are letters and whose edges are
its consecutive pairs. A uniformly random Eulerian path with the same first letter (and so the
same last letter and the same pair counts) is drawn as in Kandel et al. (Gene 174:309, 1996):
pick for each letter other than the last one a random *last exit* edge so that the last exits
form a tree directed toward the last letter, shuffle each letter's other exits, put the last
exit at the end, and walk. Control sequences made this way keep the GC content and every
dinucleotide count (CpG depletion included), so a classifier that separates them from the
originals must use more than composition.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


def _last_exits(succ: dict[str, list[str]], last: str, rng: np.random.Generator) -> dict[str, int]:
    """For each letter with exits (but the last letter), the index of its last exit edge, drawn until
    the chosen edges form a tree toward ``last``."""
    while True:
        choice = {v: int(rng.integers(len(e))) for v, e in succ.items() if v != last}
        ok = True
        for v in choice:
            seen, cur = set(), v
            while cur != last:
                if cur in seen:
                    ok = False
                    break
                seen.add(cur)
                cur = succ[cur][choice[cur]]
            if not ok:
                break
        if ok:
            return choice


def dinucleotide_shuffle(seq: str, rng: np.random.Generator) -> str:
    """A random sequence with the same first and last letter and the same counts of every pair of
    consecutive letters as ``seq`` (case-sensitive: upper-case the input first to ignore case)."""
    if len(seq) <= 2:
        return seq
    succ: dict[str, list[str]] = defaultdict(list)
    for a, b in zip(seq, seq[1:]):
        succ[a].append(b)
    last = seq[-1]
    exits = _last_exits(succ, last, rng)
    order: dict[str, list[str]] = {}
    for v, edges in succ.items():
        if v == last:
            order[v] = [edges[i] for i in rng.permutation(len(edges))]
        else:
            k = exits[v]
            rest = edges[:k] + edges[k + 1:]
            order[v] = [rest[i] for i in rng.permutation(len(rest))] + [edges[k]]
    pos = dict.fromkeys(order, 0)
    out, cur = [seq[0]], seq[0]
    for _ in range(len(seq) - 1):
        nxt = order[cur][pos[cur]]
        pos[cur] += 1
        out.append(nxt)
        cur = nxt
    return "".join(out)
