"""Reading a source file: detect encoding, format, delimiter and header; split it into byte-range chunks;
parse one chunk with pyarrow. Every problem with the input raises ``DatasetInputError`` with a message a
person can act on, and the 1-based line and the column where they are known.

Chunks are byte ranges that end on a line break, so each prefork child reads and parses only its own
range (bounded memory) and the parent never ships data in messages. For CSV a break inside a quoted
field is not a boundary: a boundary is taken only where the number of quote characters before it is
even (RFC 4180 escapes a quote as two quotes, so parity is exact).
"""
from __future__ import annotations

import base64
import codecs
import csv
import io
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

SAMPLE_BYTES = 64 * 1024
SCAN_BLOCK_BYTES = 4 * 1024 * 1024
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TSV_SUFFIXES = {".tsv", ".tab"}
PREFERRED_LEGACY_ENCODINGS = ("cp1252", "latin_1", "iso8859_15", "cp1250")
UTF_BOMS = {codecs.BOM_UTF32_LE: "utf-32", codecs.BOM_UTF32_BE: "utf-32", codecs.BOM_UTF16_LE: "utf-16",
            codecs.BOM_UTF16_BE: "utf-16"}


class DatasetInputError(Exception):
    """The file cannot be imported as given; ``str(error)`` says why."""

    def __init__(self, message: str, row: int | None = None, column: str = ""):
        super().__init__(message)
        self.message = message
        self.row = row
        self.column = column


class SourceChanged(DatasetInputError):
    """The file was removed or rewritten while it was being imported."""


@dataclass
class Chunk:
    index: int
    offset: int
    length: int
    first_line: int  # 1-based line number of the chunk's first line in the (UTF-8) working file


@dataclass
class Plan:
    format: str  # "csv" or "jsonl"
    encoding: str  # of the original file; the working file is always UTF-8
    working_path: str  # the file chunks read: the source itself, or its UTF-8 transcode
    size: int
    mtime_ns: int
    inode: int
    delimiter: str = ","
    has_header: bool = True
    lines: int = 0
    data_rows_estimate: int = 0  # lines minus header (exact unless values contain line breaks)
    chunks: list[Chunk] = field(default_factory=list)
    schema_b64: str = ""  # the Arrow schema inferred from the first chunk, IPC-serialized
    hash_groups: int = 1  # row hashes are split into this many groups so the merge holds one at a time

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        data = dict(data)
        data["chunks"] = [Chunk(**chunk) for chunk in data.get("chunks", [])]
        return cls(**data)

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.schema_b64)))


def _stat(path: str):
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetInputError(f"file not found: {path}") from None
    except PermissionError:
        raise DatasetInputError(f"permission denied reading {path}") from None


def ensure_unchanged(plan: Plan, what: str) -> None:
    """Refuse to go on if the working file was removed or rewritten since the scan (no mixed runs)."""
    try:
        st = os.stat(plan.working_path)
    except FileNotFoundError:
        raise SourceChanged(f"the file {plan.working_path} was removed during the import ({what})") from None
    if (st.st_size, st.st_mtime_ns, st.st_ino) != (plan.size, plan.mtime_ns, plan.inode):
        raise SourceChanged(f"the file {plan.working_path} changed during the import ({what}): "
                            "import it again once it is complete")


# --- detection ---------------------------------------------------------------------------------------

def detect_encoding(sample: bytes, path: str) -> str:
    """'utf-8' (BOM or not), or the encoding charset-normalizer finds; binary and unknown are errors."""
    for bom, encoding in UTF_BOMS.items():
        if sample.startswith(bom):
            return encoding
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    nul = sample.find(b"\x00")
    if nul >= 0:
        raise DatasetInputError(f"{path} looks like a binary file, not text (NUL byte at offset {nul})")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(sample)
    best = matches.best()
    if best is None:
        raise DatasetInputError(f"{path}: unknown text encoding (not UTF-8, and no other encoding fits); "
                                "convert the file to UTF-8 or give the encoding option")
    # Single-byte encodings are often indistinguishable on a sample; among the equally clean ones,
    # prefer the encodings spreadsheets actually export. The encoding option overrides all of this.
    clean = {match.encoding for match in matches if match.chaos <= best.chaos}
    return next((name for name in PREFERRED_LEGACY_ENCODINGS if name in clean), best.encoding)


def detect_format(path: str, sample_text: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in {".csv", ".tsv", ".tab", ".txt"}:
        return "csv"
    return "jsonl" if sample_text.lstrip().startswith("{") else "csv"


def detect_dialect(path: str, sample_text: str) -> tuple[str, bool]:
    """(delimiter, has_header) from the first lines, with the standard library's csv.Sniffer."""
    lines = sample_text.splitlines()[:50]
    text = "\n".join(lines[:-1] if len(lines) > 1 else lines)  # the last line of a sample may be cut
    sniffer = csv.Sniffer()
    if Path(path).suffix.lower() in TSV_SUFFIXES:
        delimiter = "\t"
    else:
        try:
            delimiter = sniffer.sniff(text, delimiters=",\t;|").delimiter
        except csv.Error:
            delimiter = ","  # one column, or nothing to tell: the default
    try:
        sniffed = sniffer.has_header(text) if len(lines) > 1 else True
    except csv.Error:
        sniffed = True
    # The sniffer says "no header" whenever every column is text; a first row of distinct, non-empty,
    # non-numeric names is a header in practice.
    first = next(csv.reader([lines[0]], delimiter=delimiter), []) if lines else []
    looks_like_names = bool(first) and len(set(first)) == len(first) and all(
        cell.strip() and not _is_number(cell) for cell in first)
    return delimiter, sniffed or looks_like_names


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --- scan --------------------------------------------------------------------------------------------

def transcode_to_utf8(path: str, encoding: str, target: Path) -> None:
    """Stream ``path`` into a UTF-8 copy (bounded memory); undecodable bytes are an error with a line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 1
    with open(path, "rb") as src, open(target, "w", encoding="utf-8", newline="") as dst:
        while block := src.read(SCAN_BLOCK_BYTES):
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise DatasetInputError(f"bytes not valid {encoding} near line {line}: {exc.reason}", row=line) from None
            line += text.count("\n")
            dst.write(text)
        dst.write(decoder.decode(b"", final=True))


_NEWLINE, _QUOTE = np.uint8(ord("\n")), np.uint8(ord('"'))


def _count(octets: np.ndarray, byte: np.uint8) -> int:
    return int(np.count_nonzero(octets == byte))


def scan(plan: Plan, chunk_bytes: int, max_line_bytes: int, start: int = 0) -> None:
    """One pass over the working file: count lines, bound line length, cut chunks at line breaks.

    UTF-8 is validated by each chunk task on its own range (in parallel; see ``validate_utf8``).
    """
    block_size = min(SCAN_BLOCK_BYTES, max_line_bytes)
    csv_quotes = plan.format == "csv"
    lines = 0  # line breaks before the current block
    quotes = 0  # quote characters before the current block
    current_line_bytes = 0  # bytes of the line still open at the end of the previous block
    chunk_start, chunk_first_line = start, 1
    chunks: list[Chunk] = []
    with open(plan.working_path, "rb") as f:
        f.seek(start)
        block_start = start
        while block := f.read(block_size):
            octets = np.frombuffer(block, dtype=np.uint8)  # counts run in numpy: bytes.count is ~10x slower
            has_quotes = csv_quotes and b'"' in block  # a block without quotes is not counted for them
            first_break = block.find(b"\n")
            open_len = current_line_bytes + (len(block) if first_break < 0 else first_break)
            if open_len > max_line_bytes:
                raise DatasetInputError(
                    f"line {lines + 1} is longer than {max_line_bytes} bytes (DATASETS_MAX_LINE_BYTES); "
                    "is this really a line-oriented tabular file?", row=lines + 1)
            last_break = block.rfind(b"\n")
            current_line_bytes = open_len if last_break < 0 else len(block) - last_break - 1

            # Chunk boundaries inside this block, walking a cursor so each byte is counted once.
            cursor, cursor_lines, cursor_quotes = 0, lines, quotes
            while block_start + len(block) - chunk_start > chunk_bytes:
                target = max(cursor, chunk_start + chunk_bytes - block_start)
                pos = block.find(b"\n", target)
                # (a block without quotes can still lie inside a quoted value opened in an earlier block)
                while pos >= 0 and csv_quotes and (cursor_quotes + (block.count(b'"', cursor, pos) if has_quotes
                                                                    else 0)) % 2:
                    pos = block.find(b"\n", pos + 1)
                if pos < 0:
                    break
                cursor_lines += _count(octets[cursor:pos + 1], _NEWLINE)
                if has_quotes:
                    cursor_quotes += block.count(b'"', cursor, pos + 1)
                cursor = pos + 1
                end = block_start + cursor
                chunks.append(Chunk(len(chunks), chunk_start, end - chunk_start, chunk_first_line))
                chunk_start, chunk_first_line = end, cursor_lines + 1
            lines += _count(octets, _NEWLINE)
            if has_quotes:
                quotes += _count(octets, _QUOTE)
            block_start += len(block)
    if block_start > chunk_start:
        chunks.append(Chunk(len(chunks), chunk_start, block_start - chunk_start, chunk_first_line))
    plan.lines = lines + (1 if current_line_bytes else 0)
    plan.chunks = chunks


def balanced_chunk_bytes(size: int, chunk_bytes: int, multiple: int) -> int:
    """Equal chunks, never above ``chunk_bytes``, and (past one chunk) a multiple of ``multiple`` of them:
    with as many chunks as children per round, the last round keeps every child busy."""
    count = max(1, math.ceil(size / chunk_bytes))
    if count > 1 and multiple > 1:
        count = math.ceil(count / multiple) * multiple
    return max(1, math.ceil(size / count))


def inspect_source(path: str, workdir: Path, chunk_bytes: int, max_line_bytes: int, encoding: str | None = None,
                   chunk_multiple: int = 1) -> Plan:
    """Detect what the file is and cut it into chunks; infer the schema from the first chunk.

    ``encoding`` overrides detection (the import's ``encoding`` option).
    """
    st = _stat(path)
    if not os.path.isfile(path):
        raise DatasetInputError(f"{path} is not a regular file")
    if st.st_size == 0:
        raise DatasetInputError(f"{path} is empty (0 bytes)")
    with open(path, "rb") as f:
        sample = f.read(SAMPLE_BYTES)
    if sample.startswith(PARQUET_MAGIC) or Path(path).suffix.lower() == ".parquet":
        return inspect_parquet(path, st, chunk_bytes, chunk_multiple)
    if encoding:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise DatasetInputError(f"unknown encoding {encoding!r} (the import's encoding option)") from None
        encoding = {"utf-8": "utf-8-sig" if sample.startswith(codecs.BOM_UTF8) else "utf-8"}.get(encoding, encoding)
    else:
        encoding = detect_encoding(sample, path)
    working_path, start = path, 0
    if encoding not in ("utf-8", "utf-8-sig"):
        working_path = str(workdir / "source.utf8")
        transcode_to_utf8(path, encoding, Path(working_path))
    elif encoding == "utf-8-sig":
        start = len(codecs.BOM_UTF8)
    wst = os.stat(working_path)
    with open(working_path, "rb") as f:
        f.seek(start)
        sample_text = f.read(SAMPLE_BYTES).decode("utf-8", errors="replace")
    fmt = detect_format(path, sample_text)
    plan = Plan(format=fmt, encoding=encoding, working_path=working_path, size=wst.st_size,
                mtime_ns=wst.st_mtime_ns, inode=wst.st_ino)
    if fmt == "csv":
        plan.delimiter, plan.has_header = detect_dialect(path, sample_text)
    scan(plan, balanced_chunk_bytes(wst.st_size - start, chunk_bytes, chunk_multiple), max_line_bytes, start=start)
    if not plan.chunks or not sample_text.strip():
        raise DatasetInputError(f"{path} has zero columns: it holds only blank lines")
    plan.data_rows_estimate = max(0, plan.lines - (1 if fmt == "csv" and plan.has_header else 0))

    first = parse_chunk(plan, plan.chunks[0], schema=None)
    if first.num_columns == 0:
        raise DatasetInputError(f"{path} has zero columns")
    if fmt == "csv" and plan.has_header and plan.data_rows_estimate == 0:
        raise DatasetInputError(f"{path} has a header ({', '.join(first.column_names)}) but no data rows", row=1)
    # A column empty in the first chunk is typed null; later chunks may hold anything, so keep it text.
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in first.schema])
    plan.schema_b64 = base64.b64encode(schema.serialize().to_pybytes()).decode()
    return plan


# --- Parquet input -----------------------------------------------------------------------------------
# A chunk is a run of row groups (Chunk.offset = first row group, Chunk.length = how many, first_line =
# 1-based first row). Row groups are Parquet's own unit of reading, so a child's memory follows the
# row-group size the writer chose, next to DATASETS_CHUNK_BYTES.

PARQUET_MAGIC = b"PAR1"


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise SourceChanged(f"the file {path} was removed during the import") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetInputError(f"{path} is not a valid Parquet file: {exc}") from None


def inspect_parquet(path: str, st, chunk_bytes: int, chunk_multiple: int) -> Plan:
    metadata = _parquet_file(path).metadata
    schema = _parquet_file(path).schema_arrow
    if metadata.num_columns == 0 or len(schema) == 0:
        raise DatasetInputError(f"{path} has zero columns")
    if metadata.num_rows == 0:
        raise DatasetInputError(f"{path} has columns ({', '.join(schema.names)}) but no rows")
    target = balanced_chunk_bytes(sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
                                  chunk_bytes, chunk_multiple)
    chunks: list[Chunk] = []
    first_group, size, first_row, rows = 0, 0, 1, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        rows += metadata.row_group(group).num_rows
        if size >= target or group == metadata.num_row_groups - 1:
            chunks.append(Chunk(len(chunks), first_group, group - first_group + 1, first_row))
            first_group, size, first_row, rows = group + 1, 0, first_row + rows, 0
    plan = Plan(format="parquet", encoding="binary (Parquet)", working_path=path, size=st.st_size,
                mtime_ns=st.st_mtime_ns, inode=st.st_ino, delimiter="", has_header=True,
                lines=metadata.num_rows, data_rows_estimate=metadata.num_rows, chunks=chunks)
    plan.schema_b64 = base64.b64encode(schema.serialize().to_pybytes()).decode()
    return plan


def _read_parquet(plan: Plan, chunk: Chunk) -> pa.Table:
    try:
        return _parquet_file(plan.working_path).read_row_groups(range(chunk.offset, chunk.offset + chunk.length),
                                                                use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetInputError(f"cannot read Parquet row groups {chunk.offset}-{chunk.offset + chunk.length - 1} "
                                f"(rows from {chunk.first_line}): {exc}", row=chunk.first_line) from None


# --- parsing one chunk -------------------------------------------------------------------------------

_CSV_CONVERSION = re.compile(r"In CSV column #(\d+): Row #(\d+): CSV conversion error to ([^:]+): invalid value '(.*)'",
                             re.DOTALL)
_JSON_ROW = re.compile(r"in row (\d+)")


def read_range(plan: Plan, chunk: Chunk) -> bytes:
    try:
        with open(plan.working_path, "rb") as f:
            f.seek(chunk.offset)
            data = f.read(chunk.length)
    except FileNotFoundError:
        raise SourceChanged(f"the file {plan.working_path} was removed during the import "
                            f"(chunk {chunk.index} at line {chunk.first_line})") from None
    if len(data) != chunk.length:
        raise SourceChanged(f"the file {plan.working_path} was truncated during the import "
                            f"(chunk {chunk.index} at line {chunk.first_line})")
    return data


def validate_utf8(data: bytes, chunk: Chunk, offset: int) -> None:
    """The working file is UTF-8 (or was transcoded to it): say where it is not, by line."""
    if data.isascii():  # ASCII is UTF-8; isascii() reads words at a time, decode() 10x slower
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = chunk.first_line + data.count(b"\n", 0, exc.start)
        raise DatasetInputError(f"invalid UTF-8 at line {line} (byte offset {offset + exc.start}): {exc.reason}; "
                                "the file is not UTF-8 encoded (give the encoding option if it is another one)",
                                row=line) from None


def parse_chunk(plan: Plan, chunk: Chunk, schema: pa.Schema | None) -> pa.Table:
    """Parse one chunk with pyarrow (single-threaded: parallelism comes from prefork children).

    ``schema`` None infers types (the first chunk, at scan time); otherwise every column must convert
    to the type inferred from the first chunk, and a value that does not is a mixed-types error.
    """
    if plan.format == "parquet":
        return _read_parquet(plan, chunk)
    data = read_range(plan, chunk)
    validate_utf8(data, chunk, chunk.offset)
    block_size = max(len(data) + 1, 1 << 20)  # one block per chunk: chunks already bound memory
    if plan.format == "jsonl":
        return _parse_jsonl(data, chunk, schema, block_size)
    return _parse_csv(plan, data, chunk, schema, block_size)


def _parse_csv(plan: Plan, data: bytes, chunk: Chunk, schema, block_size: int) -> pa.Table:
    first_invalid = []

    def on_invalid_row(row):
        first_invalid.append(row)
        return "error"

    header_in_chunk = plan.has_header and chunk.index == 0
    column_names = None if header_in_chunk or schema is None else schema.names
    read_options = pacsv.ReadOptions(use_threads=False, block_size=block_size, column_names=column_names,
                                     autogenerate_column_names=not plan.has_header and column_names is None)
    convert_options = pacsv.ConvertOptions(column_types=schema if schema is not None else None,
                                           strings_can_be_null=True)
    parse_options = pacsv.ParseOptions(delimiter=plan.delimiter, newlines_in_values=True,
                                       invalid_row_handler=on_invalid_row)
    try:
        return pacsv.read_csv(io.BytesIO(data), read_options=read_options, parse_options=parse_options,
                              convert_options=convert_options)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if first_invalid:
            row = first_invalid[0]
            line = chunk.first_line + (row.number - 1 if row.number else 0)
            raise DatasetInputError(
                f"ragged row at line {line}: expected {row.expected_columns} columns, got {row.actual_columns}: "
                f"{row.text[:200]!r}", row=line) from None
        match = _CSV_CONVERSION.search(message)
        if match and schema is not None:
            col, row, arrow_type, value = int(match[1]), int(match[2]), match[3], match[4]
            line = chunk.first_line + row - 1
            name = schema.names[col] if col < len(schema.names) else f"#{col + 1}"
            raise DatasetInputError(
                f"mixed types in column {name!r} at line {line}: the column is {arrow_type} "
                f"(inferred from the first chunk) but this value is not: {value[:200]!r}", row=line, column=name) from None
        if "Empty CSV file" in message:
            raise DatasetInputError("the file has zero columns (no header and no values)") from None
        raise DatasetInputError(f"cannot parse CSV near line {chunk.first_line}: {message[:500]}",
                                row=chunk.first_line) from None


def _parse_jsonl(data: bytes, chunk: Chunk, schema, block_size: int) -> pa.Table:
    read_options = pajson.ReadOptions(use_threads=False, block_size=block_size)
    parse_options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error") if schema is not None \
        else pajson.ParseOptions()
    try:
        return pajson.read_json(io.BytesIO(data), read_options=read_options, parse_options=parse_options)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        bad = _first_invalid_json_line(data)
        if bad is not None:
            line, reason = chunk.first_line + bad[0], bad[1]
            raise DatasetInputError(f"JSON Lines: line {line} is not a valid JSON object: {reason}", row=line) from None
        match = _JSON_ROW.search(message)
        line = chunk.first_line + int(match[1]) if match else None
        if "unexpected field" in message.lower() or "changed from" in message or "column" in message.lower():
            raise DatasetInputError(f"JSON Lines: inconsistent record near line {line or chunk.first_line}: "
                                    f"{message[:500]}", row=line) from None
        raise DatasetInputError(f"JSON Lines: cannot parse near line {line or chunk.first_line}: {message[:500]}",
                                row=line) from None


def _first_invalid_json_line(data: bytes) -> tuple[int, str] | None:
    """(0-based line, reason) of the first line that is not a JSON object: pyarrow's message has no line."""
    import json

    for number, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            return number, str(exc)
        if not isinstance(value, dict):
            return number, f"a JSON {type(value).__name__}, not an object"
    return None
