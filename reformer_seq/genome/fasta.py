"""Reading genomes: FASTA/GenBank records through Bio.SeqIO, as text.

:func:`read_records` streams ``(id, description, sequence)`` from FASTA (``.fa .fasta .fna``) or
GenBank (``.gb .gbk .gbff``) files, plain, gzip or bgzip (gzip is detected by its magic bytes, the
format by the first line: ``>`` is FASTA, ``LOCUS`` is GenBank; blank lines before it are skipped).
One record is in memory at a time. Every bad input (missing or empty file, FASTQ or binary data, a
record without sequence, a truncated gzip) raises :class:`~reformer_seq.errors.InputError` with one
line naming the file, the record and what was expected. Encoding and caching the records:
:mod:`.encoded`.
"""
from __future__ import annotations

import codecs
import gzip
import io
import zlib
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Optional, Union


from ..errors import InputError
from ..types import PathLike

FASTA_EXTS = (".fa", ".fasta", ".fna", ".fas", ".ffn", ".frn", ".fsa", ".seq")
GENBANK_EXTS = (".gb", ".gbk", ".gbff", ".genbank")
EXPECTED = "a FASTA (.fa .fasta .fna) or GenBank (.gb .gbk .gbff) file, plain, gzip or bgzip"
_SNIFF_BYTES = 1 << 16
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                      b"PK\x03\x04": "zip"}


class SeqRecordText(NamedTuple):
    """One record as text: ``id`` (first word of the header), ``description`` (whole header)."""

    id: str
    description: str
    sequence: str


# ---------------------------------------------------------------------- opening and sniffing
def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_binary(path: Path) -> Union[gzip.GzipFile, io.BufferedReader]:
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found; expected {EXPECTED}")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected {EXPECTED}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file; expected {EXPECTED}")


def _read_head(path: Path) -> bytes:
    """The first 64 KiB of the (decompressed) file; a broken gzip raises InputError."""
    try:
        with _open_binary(path) as f:
            return f.read(_SNIFF_BYTES)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: gzip data is truncated or corrupt ({e}); "
                         f"expected a complete gzip/bgzip file; download or compress it again") from None


def sniff_format(path: PathLike) -> str:
    """``"fasta"`` or ``"genbank"`` from the file's first line; anything else raises InputError."""
    path = Path(path)
    check_file(path)
    head = _read_head(path)
    for magic, name in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise InputError(f"{path}: {name}-compressed; expected {EXPECTED}; decompress it "
                             f"(or recompress with gzip/bgzip)")
    if b"\x00" in head:
        raise InputError(f"{path}: binary data (NUL bytes); expected {EXPECTED}")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: binary data (not UTF-8 text at byte {e.start:,}); expected {EXPECTED}") from None
    first = text.lstrip()
    if not first:
        raise InputError(f"{path}: empty file (no records, only whitespace); expected {EXPECTED}")
    if first.startswith(">"):
        return "fasta"
    if first.startswith("LOCUS"):
        return "genbank"
    line = first.splitlines()[0][:40]
    if first.startswith("@"):
        raise InputError(f"{path}: looks like FASTQ (first line {line!r}); expected {EXPECTED}; "
                         f"convert it with Bio.SeqIO.convert(path, 'fastq', out, 'fasta')")
    raise InputError(f"{path}: first line {line!r} starts neither a FASTA record ('>') nor a GenBank "
                     f"record ('LOCUS'); expected {EXPECTED}")


def open_text(path: Path, errors: str = "strict") -> IO[str]:
    """A text file, plain or gzip/bgzip (told by its magic bytes), as UTF-8."""
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", errors=errors)
    return open(path, encoding="utf-8", errors=errors)


def _skip_blank_lines(handle: IO[str]) -> None:
    """Move ``handle`` past whitespace-only lines at its start (left by concatenating or editing
    files); Biopython takes them for comments and refuses the file."""
    while True:
        pos = handle.tell()
        line = handle.readline()
        if not line or line.strip():
            handle.seek(pos)
            return


# ---------------------------------------------------------------------- reading records
def read_records(path: PathLike, format: Optional[str] = None) -> Iterator[SeqRecordText]:
    """Stream the records of a FASTA or GenBank file (plain/gzip/bgzip) as ``(id, description, sequence)``.

    ``format`` (``"fasta"``/``"genbank"``) overrides detection from the first line. A record
    without sequence, unreadable data or a file without records raises InputError.
    """
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    path = Path(path)
    check_file(path)
    fmt = format or sniff_format(path)
    n, last = 0, None
    with open_text(path) as handle:
        records = None
        while True:
            where = f"while reading record #{n + 1}" + (f" (after {last!r})" if last else "")
            try:
                if records is None:  # Biopython reads the first line here
                    _skip_blank_lines(handle)
                    records = SeqIO.parse(handle, fmt)
                rec = next(records)
                seq = str(rec.seq)
            except StopIteration:
                break
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise InputError(f"{path}: gzip data is truncated or corrupt {where} ({e}); "
                                 f"expected a complete gzip/bgzip file; download or compress it again") from None
            except UnicodeDecodeError as e:
                raise InputError(f"{path}: binary data {where} (not UTF-8 text: {e.reason}); "
                                 f"expected {EXPECTED}") from None
            except UndefinedSequenceError:
                raise InputError(f"{path}: record {rec.id!r} (#{n + 1}) has no sequence data (a CONTIG or "
                                 f"annotation-only GenBank record); expected an ORIGIN section with bases") from None
            except (ValueError, AssertionError) as e:  # Biopython's GenBank scanner asserts on some bad layouts
                msg = (str(e).strip().splitlines() or [type(e).__name__ + " in Biopython's parser"])[0]
                raise InputError(f"{path}: not valid {fmt.upper()} {where} ({msg}); expected {EXPECTED}") from None
            n += 1
            if not seq:
                raise InputError(f"{path}: record {rec.id!r} (#{n}) has no sequence; expected sequence lines "
                                 f"after its header; remove the record or add its bases")
            last = rec.id
            yield SeqRecordText(rec.id, rec.description, seq)
    if n == 0:
        raise InputError(f"{path}: no {fmt.upper()} records found; expected {EXPECTED}")


