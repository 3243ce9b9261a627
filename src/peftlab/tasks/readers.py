"""Readers for the official release formats: TSV (GLUE), JSON lines (SuperGLUE), CSV (E2E, Yelp).

Every reader yields `(line_number, row)` so that a bad row can be reported by file and line, and every
problem with a file (missing, not UTF-8, a missing column, a short row, no rows at all) raises a
`PeftlabError` whose one-line message names the file and, where it applies, the line.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import PeftlabError

Row = tuple[int, dict]


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a leading byte-order mark is dropped, as in GLUE's MRPC dev file)."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():   # reading a FIFO would wait forever
        raise PeftlabError(f"{path}: not a regular file (a FIFO or a device): refused")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PeftlabError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise PeftlabError(f"{path}: is a directory, expected a data file") from None
    except OSError as err:      # no permission, an I/O error: one line naming the file
        raise PeftlabError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PeftlabError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x})") from None


def read_tsv(path: Path, columns: tuple[str, ...] | None = None, header: bool = True,
             required: tuple[str, ...] = ()) -> list[Row]:
    """Tab-separated rows. `header=False` names the columns from `columns` by position (CoLA).

    GLUE's TSVs contain unbalanced quotes, so quoting is off: a field is everything between tabs."""
    lines = read_text(path).splitlines()
    if header:
        if not lines:
            raise PeftlabError(f"{path}: empty file, expected a header line")
        names = [c.strip() for c in lines[0].split("\t")]
        start = 2
        body = lines[1:]
    else:
        names, start, body = list(columns or ()), 1, lines
    _require_columns(path, names, required)
    rows = []
    for number, line in enumerate(body, start=start):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < len(names):
            need = [n for n in required if names.index(n) >= len(fields)]
            if need or not required:
                raise PeftlabError(f"{path}:{number}: {len(fields)} fields, expected {len(names)}")
        rows.append((number, dict(zip(names, fields))))
    return _non_empty(path, rows)


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[Row]:
    """One JSON object per line (SuperGLUE); every object must have the `required` keys."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PeftlabError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise PeftlabError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise PeftlabError(f"{path}:{number}: missing field '{missing[0]}'")
        rows.append((number, row))
    return _non_empty(path, rows)


def read_csv(path: Path, required: tuple[str, ...] = (), columns: tuple[str, ...] | None = None) -> list[Row]:
    """A CSV file with a header line (E2E), or without one when `columns` names the fields by position
    (Yelp polarity); quoted fields may hold commas and newlines."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), fieldnames=list(columns) if columns else None)
    _require_columns(path, [c.strip() for c in reader.fieldnames or []], required)
    rows = []
    try:
        for row in reader:
            if any(row.get(k) is None for k in required):
                raise PeftlabError(f"{path}:{reader.line_num}: row has too few fields")
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise PeftlabError(f"{path}:{reader.line_num}: bad CSV ({err})") from None
    return _non_empty(path, rows)


def _require_columns(path: Path, names: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise PeftlabError(f"{path}: missing column '{missing[0]}' (columns: {', '.join(names) or 'none'})")


def _non_empty(path: Path, rows: list[Row]) -> list[Row]:
    if not rows:
        raise PeftlabError(f"{path}: no examples (empty split)")
    return rows
