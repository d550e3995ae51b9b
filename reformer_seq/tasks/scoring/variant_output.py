"""Writing ``score-variants`` results: TSV, or the input VCF with INFO fields added (pysam). Atomic."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ...errors import SeqformerError
from ...runtime.files import atomic_write, atomic_write_json
from .vcf_input import open_vcf, quiet_htslib
from ...types import PathLike

COLUMNS = ["chrom", "pos", "id", "ref", "alt", "llr", "llr_forward", "llr_reverse", "note"]
SIGN_NOTE = ("llr = log2 P(sequence with ALT) - log2 P(sequence with REF), in bits; "
             "negative = the ALT allele is less likely than the reference")
NOTES = {  # code (VCF INFO/SEQFORMER_NOTE) -> meaning
    "symbolic": "symbolic or structural allele, not scored",
    "non_acgt": "allele with letters other than A/C/G/T, not scored",
    "ref_mismatch": "REF disagrees with the reference, not scored",
    "alt_equals_ref": "ALT equals REF (no change), not scored",
    "past_end": "REF lies outside the contig, not scored",
    "too_long": "allele longer than a quarter of the window, not scored (raise --window)",
    "masked_snv_only": "a masked model scores SNVs only, not scored",
    "near_end": "near a contig end: scored with the context there is",
}


FORMATS = {".tsv": "tsv", ".vcf": "vcf", ".vcf.gz": "vcf.gz"}


def output_format(out: PathLike) -> str:
    name = str(out).lower()
    for suffix in (".vcf.gz", ".vcf", ".tsv"):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise SeqformerError(f"{out}: cannot tell the output format from the name; end it with .tsv, .vcf or .vcf.gz")


def sidecar_path(out: PathLike) -> Path:
    """The JSON file beside a TSV that holds what the table means (``scores.tsv`` -> ``scores.tsv.json``)."""
    return Path(f"{out}.json")


def _num(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "NA"


def header_lines(meta: dict[str, Any]) -> list[str]:
    """The lines that explain the scores: the TSV's JSON sidecar ``notes`` / the VCF header descriptions."""
    both = meta["strand"] == "both"
    how = ("summed over the bases from the variant to the end of its window (causal model)"
           if meta["objective"] == "causal" else "at the masked variant position (masked model, SNVs only)")
    lines = [f"{SIGN_NOTE}; {how}",
             f"checkpoint {meta['checkpoint']}, window {meta['window']} bases, strand {meta['strand']}"
             + ("; llr = mean of llr_forward and llr_reverse (the reverse-complemented window)" if both else "")]
    if meta.get("markov_order") is not None:
        lines.append(f"llr_markov: the same score from the order-{meta['markov_order']} Markov chain fitted on the "
                     f"checkpoint's training data (as seqformer evaluate fits it)")
    lines += [description for _, description in meta.get("_extra", ())]
    lines.append("NA = not scored; note says why")
    return lines


def tsv_text(alleles: Sequence, meta: dict[str, Any]) -> str:
    strands = 2 if meta["strand"] == "both" else 1
    markov = meta.get("markov_order") is not None
    extra = [name for name, _ in meta.get("_extra", ())]
    # the header is line 1 (metadata: the JSON sidecar)
    out = ["\t".join(COLUMNS + (["llr_markov"] if markov else []) + [f"llr_{n}" for n in extra])]
    for a in alleles:
        row = [a.chrom, str(a.pos), a.id, a.ref, a.alt, _num(a.llr(strands)), _num(a.llr_forward),
               _num(a.llr_reverse if strands == 2 else math.nan), a.note_text() or "."]
        if markov:
            row.append(_num(a.llr_markov(strands)))
        row += [_num(a.llr_extra(n, strands)) for n in extra]
        out.append("\t".join(row))
    return "\n".join(out) + "\n"


def _prepare_header(vf, records: Sequence, meta: dict[str, Any]) -> None:
    """Contigs the VCF header lacks, INFO/END (htslib needs it for symbolic alleles) and our fields."""
    hdr = vf.header
    for r in records:
        if r.id not in hdr.contigs:
            hdr.contigs.add(r.id, length=len(r))
    if "END" not in hdr.info:
        hdr.info.add("END", 1, "Integer", "End position of the variant described in this record")
    desc = "; ".join(header_lines(meta)).replace('"', "'")
    fields = [("SEQFORMER_LLR", "Float", f"seqformer score per ALT: {desc}"),
              ("SEQFORMER_LLR_FWD", "Float", "seqformer score per ALT on the forward strand (bits)")]
    if meta["strand"] == "both":
        fields.append(("SEQFORMER_LLR_REV", "Float", "seqformer score per ALT on the reverse strand (bits)"))
    if meta.get("markov_order") is not None:
        fields.append(("SEQFORMER_LLR_MARKOV", "Float", f"the same score from the order-{meta['markov_order']} "
                                                        f"Markov baseline (bits)"))
    for name, description in meta.get("_extra", ()):
        fields.append((f"SEQFORMER_LLR_{name.upper()}", "Float", description.replace('"', "'")))
    fields.append(("SEQFORMER_NOTE", "String", "why an ALT was not scored or was flagged: " +
                   ", ".join(f"{k} = {v}" for k, v in NOTES.items())))
    for name, kind, text in fields:
        if name in hdr.info:
            raise SeqformerError(f"the VCF already has INFO/{name} (scored before?); remove it with "
                                 f"bcftools annotate -x INFO/{name}")
        hdr.info.add(name, "A", kind, text)
    hdr.add_line("##seqformer_score_variants=<" + ",".join(f"{k}={v}" for k, v in meta.items()
                                                       if v is not None and not k.startswith("_")) + ">")


def _info_values(alleles: Sequence, strands: int, markov: bool, extra: Sequence[str] = ()) -> dict[str, tuple]:
    def num(x: float):
        return float(x) if math.isfinite(x) else None

    vals = {"SEQFORMER_LLR": tuple(num(a.llr(strands)) for a in alleles),
            "SEQFORMER_LLR_FWD": tuple(num(a.llr_forward) for a in alleles)}
    if strands == 2:
        vals["SEQFORMER_LLR_REV"] = tuple(num(a.llr_reverse) for a in alleles)
    if markov:
        vals["SEQFORMER_LLR_MARKOV"] = tuple(num(a.llr_markov(strands)) for a in alleles)
    for name in extra:
        vals[f"SEQFORMER_LLR_{name.upper()}"] = tuple(num(a.llr_extra(name, strands)) for a in alleles)
    vals["SEQFORMER_NOTE"] = tuple("|".join(c for c, _ in a.notes) or "." for a in alleles)
    return vals


def write_vcf(alleles: Sequence, vcf_in: PathLike, tmp: str, gz: bool, records: Sequence, meta: dict[str, Any]) -> None:
    import pysam

    by_row: dict[int, list] = {}
    for a in alleles:
        by_row.setdefault(a.row, []).append(a)
    strands = 2 if meta["strand"] == "both" else 1
    markov = meta.get("markov_order") is not None
    with quiet_htslib(), open_vcf(vcf_in) as vf:
        _prepare_header(vf, records, meta)
        with pysam.VariantFile(tmp, "wz" if gz else "w", header=vf.header) as out:
            for row, rec in enumerate(vf):
                if rec.alts:
                    extra = [name for name, _ in meta.get("_extra", ())]
                    for k, v in _info_values(by_row[row], strands, markov, extra).items():
                        rec.info[k] = v
                out.write(rec)


def write_variants(alleles: Sequence, out: PathLike, fmt: str, vcf_in: PathLike, records: Sequence,
                   meta: dict[str, Any]) -> Path:
    """Write ``alleles`` to ``out`` as ``fmt`` (``tsv``, ``vcf``, ``vcf.gz``) atomically."""
    out = Path(out)
    if out.is_dir():
        raise SeqformerError(f"--out {out} is a directory; give a file name such as {out / 'scores.tsv'}")
    if fmt == "tsv":
        data = tsv_text(alleles, meta).encode()
        atomic_write_json(sidecar_path(out), {**meta, "notes": header_lines(meta), "columns": data.split(b"\n")[0]
                                              .decode().split("\t")})

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(data)
    else:
        def write(tmp: str) -> None:
            write_vcf(alleles, vcf_in, tmp, fmt == "vcf.gz", records, meta)
    atomic_write(out, write, suffix=out.suffix)
    return out
