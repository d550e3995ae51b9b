"""Transcription-factor motifs: reading them with ``Bio.motifs`` (files), PSSMs and thresholds (pssm),
and scanning genomes (scan).

* :func:`read_motifs` / :func:`load_motifs` read JASPAR (``.jaspar``), MEME text ("minimal" MEME,
  ``.meme``; also MEME XML), TRANSFAC (``.transfac .dat``) and single-matrix PFM (``.pfm``) files
  through ``Bio.motifs``; a file may hold many motifs. ``ids`` selects motifs by matrix id with
  version (``MA0139.2``), without version (``MA0139``: every version) or by name (``CTCF``,
  case-insensitive). Every motif becomes a :class:`Motif` holding a (W, 4) count matrix in
  ``A C G T`` order; a frequency matrix (columns summing to about 1) is read as
  :data:`NOMINAL_SITES` sites, MEME's own default.
* :func:`make_pssm` builds a :class:`PSSM`: log2-odds ``log2(p / b)`` with
  ``p = (count + pseudocount * b) / (n + pseudocount)`` (the ``pseudocount`` is spread over the
  letters in proportion to the background ``b``; the same arithmetic as
  ``motif.counts.normalize(pseudocounts={l: pseudocount * b[l]}).log_odds(b)`` in Biopython, whose
  scores the tests compare against). The background comes from the scanned sequences' base
  composition (:func:`background_from_records`), made strand-symmetric (``A = T``, ``C = G``) so
  that both strands are scored against the same background.
* :func:`scan_records` scores every position on both strands with numpy (one gather per motif
  column, in chunks, so a bacterial genome takes a fraction of a second per motif); windows that
  contain N (or any non-ACGT token) never score. A minus-strand site ``[start, end)`` is one whose
  reverse complement matches the motif; ``start``/``end`` are always forward-strand, 0-based,
  end-exclusive coordinates.
* :class:`Threshold`: when a score counts as a site. ``p:1e-5`` (the default, stringent) keeps
  windows whose score would be reached with probability at most 1e-5 by a random window drawn
  from the background (per strand and position, like FIMO's p-values; computed from the PSSM's
  exact score distribution on a 0.001-bit grid, with the cut raised by the largest rounding
  error so the bound holds); ``rel:0.9`` keeps scores at or above 90% of the
  way from the PSSM's minimum to its maximum; a plain number (``10`` or ``score:10``) is a
  log2-odds cut-off in bits. A p-value cut cannot be met by a motif whose best word is itself
  that likely (about 8 bases or fewer at p:1e-5: 4^-8 = 1.5e-5); such a motif gets no sites and
  an infinite cut, and the evaluation report says so. At the default, JASPAR CTCF (MA0139.2) has a site in about half of
  the GM12878 CTCF ChIP-seq peaks and in almost none of the same peaks shuffled (data/README.md).
"""
from .files import (DEFAULT_PSEUDOCOUNT, DEFAULT_THRESHOLD, EXPECTED, FORMATS, LETTERS, NOMINAL_SITES, Motif,
                    detect_format, load_motifs, read_motifs, select_motifs)
from .pssm import PSSM, Threshold, background_from_records, base_counts, make_pssm
from .scan import ScanIndex, Site, fraction_with_site, non_overlapping, scan_records, score_sequence, shuffle_records

__all__ = ["DEFAULT_PSEUDOCOUNT", "DEFAULT_THRESHOLD", "EXPECTED", "FORMATS", "LETTERS", "NOMINAL_SITES", "Motif",
           "detect_format", "load_motifs", "read_motifs", "select_motifs", "PSSM", "Threshold",
           "background_from_records", "base_counts", "make_pssm", "ScanIndex", "Site", "fraction_with_site",
           "non_overlapping", "scan_records", "score_sequence", "shuffle_records"]
