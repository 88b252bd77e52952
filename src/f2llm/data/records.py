"""Checks of training records: errors that name the file, row and field; a report of skipped
records; language codes; the column-wise checks every reader runs on its records.

Rows are located as `line N` (1-based line of a JSONL file), `row N (0-based)` (row index of a
parquet file or a datasets folder) or `entry N` (1-based position in a manifest).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from f2llm.data.formats import Format
from f2llm.errors import UserError

log = logging.getLogger(__name__)

OnBadRecord = Literal["raise", "skip"]
RowKind = Literal["line", "row", "entry"]

# Reasons, shared by error messages and the skip report. Record-level ones can be skipped;
# file-level ones (a missing, empty or unreadable file, a bad manifest entry) always raise.
MALFORMED_JSON = "malformed JSON"
NOT_AN_OBJECT = "not a JSON object"
MISSING_FIELD = "missing field"
EMPTY_STRING = "empty string"
WRONG_TYPE = "wrong type"
TOO_FEW_NEGATIVES = "too few negatives"
TOO_MANY_NEGATIVES = "too many negatives"
UNKNOWN_LANGUAGE = "unknown language code"
INVALID_UTF8 = "invalid UTF-8"
FILE_NOT_FOUND = "file not found"
EMPTY_FILE = "empty file"
UNREADABLE_FILE = "unreadable file"
UNKNOWN_FORMAT = "unknown format"
INVALID_ENTRY = "invalid entry"
DUPLICATE_FIELD = "duplicate field"
NO_RECORDS_LEFT = "no valid records left"


class DataError(UserError, ValueError):
    """A problem with training data, located by file, row (see `row_kind`) and field."""

    def __init__(
        self,
        file: str | Path,
        reason: str,
        detail: str = "",
        row: int | None = None,
        field: str | None = None,
        row_kind: RowKind = "row",
    ) -> None:
        self.file, self.reason, self.detail = str(file), reason, detail
        self.row, self.field, self.row_kind = row, field, row_kind
        super().__init__(self._message())

    @property
    def location(self) -> str:
        """`line 17`, `row 5 (0-based)`, `entry 2`, or "" for a file-level problem."""
        return "" if self.row is None else location(self.row, self.row_kind)

    def _message(self) -> str:
        parts = [self.file]
        if self.row is not None:
            parts.append(self.location)
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        text = ", ".join(parts) + f": {self.reason}"
        return text + (f": {self.detail}" if self.detail else "")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the attributes when the error crosses a process boundary (pickled).
        return (type(self), (self.file, self.reason, self.detail, self.row, self.field,
                             self.row_kind))


def location(row: int, row_kind: RowKind) -> str:
    """How a message names a row: `line 17`, `row 5 (0-based)` or `entry 2`."""
    return f"row {row} (0-based)" if row_kind == "row" else f"{row_kind} {row}"


@dataclass
class SkipReport:
    """Records skipped with `on_bad_record="skip"`: counts per (file, reason), a few example
    locations each, and how many records each file had."""

    max_examples: int = 3
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)

    def add(self, file: str | Path, reason: str, count: int = 1,
            examples: Sequence[str] = ()) -> None:
        key = (str(file), reason)
        self.counts[key] = self.counts.get(key, 0) + count
        kept = self.examples.setdefault(key, [])
        kept += list(examples)[: self.max_examples - len(kept)]

    def add_records(self, file: str | Path, count: int) -> None:
        self.records[str(file)] = self.records.get(str(file), 0) + count

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def skipped_in(self, file: str | Path) -> int:
        return sum(n for (f, _), n in self.counts.items() if f == str(file))

    def summary(self) -> str:
        """A table of skipped records per file and reason, with example locations."""
        total = sum(self.records.values())
        if not self.counts:
            return f"no records skipped ({total} read)"
        rows = [("file", "reason", "skipped", "examples")]
        for (file, reason), n in sorted(self.counts.items()):
            rows.append((file, reason, str(n), "; ".join(self.examples.get((file, reason), []))))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"skipped {self.skipped} of {total} records"]
        for r in rows:
            lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]),
                                    r[2].rjust(widths[2]), r[3]]).rstrip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: {"skipped", "records", "files": {file: {"records", "skipped":
        {reason: {"count", "examples"}}}}}."""
        files: dict[str, Any] = {f: {"records": n, "skipped": {}} for f, n in self.records.items()}
        for (file, reason), n in sorted(self.counts.items()):
            entry = files.setdefault(file, {"records": 0, "skipped": {}})
            entry["skipped"][reason] = {"count": n, "examples": self.examples.get((file, reason),
                                                                                  [])}
        return {"skipped": self.skipped, "records": sum(self.records.values()), "files": files}

    def update(self, data: dict[str, Any]) -> None:
        """Add the counts of a `to_dict()` result (e.g. stored with a cached corpus)."""
        for file, entry in data.get("files", {}).items():
            self.add_records(file, entry.get("records", 0))
            for reason, item in entry.get("skipped", {}).items():
                self.add(file, reason, item["count"], item.get("examples", []))


def check_records_kept(file: str | Path, read: int, kept: int) -> None:
    """A `DataError` for a file that held no records, or whose `read` records were all
    skipped."""
    if read == 0:
        raise DataError(file, EMPTY_FILE, "no records")
    if kept == 0:
        raise DataError(file, NO_RECORDS_LEFT, f"all {read} records skipped (see the skip "
                        "report)")


def check_on_bad_record(value: str) -> OnBadRecord:
    """`value` if it is an `on_bad_record` mode (raise or skip), else a ValueError."""
    if value not in ("raise", "skip"):
        raise ValueError(f"on_bad_record must be 'raise' or 'skip', got {value!r}")
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Language codes

ISO_CODES_DIR = Path("/usr/share/iso-codes/json")
# ISO 639-1, embedded so that two-letter codes are checked even without the iso-codes package,
# plus retired codes that gettext locales still use (mo) and old Java aliases (iw, in, ji, jw).
_ISO_639_1 = """
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg sh si sk sl sm sn so sq sr ss st su sv
sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
mo iw in ji jw
"""
ISO_639_1 = frozenset(_ISO_639_1.split())
# Special ISO 639-2 codes: multiple, undetermined, uncoded languages, no linguistic content.
SPECIAL_CODES = frozenset({"mul", "und", "mis", "zxx"})
# language (2-3 letters), then optional script (Latn), region (BR, 419), variants (valencia),
# each after "_" or "-", then an optional gettext @modifier (sr@latin, ca@valencia).
_LANGUAGE_TAG = re.compile(
    r"(?P<language>[a-z]{2,3})"
    r"(?:[_-](?P<script>[A-Z][a-z]{3}))?"
    r"(?:[_-](?P<region>[A-Z]{2}|[0-9]{3}))?"
    r"(?:[_-](?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"
    r"(?:@[A-Za-z0-9]+)?"
)
_TAG_SHAPE = "ISO 639-1/639-3 code with optional script, region or @modifier, e.g. zh_TW, pt-BR, " \
             "sr@latin, eng_Latn"


@functools.cache
def _iso_tables() -> tuple[frozenset[str], dict[str, str]] | None:
    """(codes, lower-cased language name -> code) from the iso-codes package, if installed."""
    codes: set[str] = set()
    names: dict[str, str] = {}
    for part, key in (("639-3", "639-3"), ("639-2", "639-2"), ("639-5", "639-5")):
        path = ISO_CODES_DIR / f"iso_{part}.json"
        if not path.exists():
            if part == "639-3":
                return None
            continue
        for entry in json.loads(path.read_text(encoding="utf-8"))[key]:
            entry_codes = [entry[k] for k in ("alpha_2", "alpha_3", "bibliographic") if k in entry]
            codes.update(c for c in entry_codes if re.fullmatch("[a-z]{2,3}", c))
            for k in ("name", "common_name", "inverted_name"):
                if k in entry:
                    names.setdefault(entry[k].lower(), entry_codes[0])
    return frozenset(codes), names


@functools.cache
def _warn_unchecked() -> None:
    log.warning("%s is missing: three-letter language codes are accepted unchecked", ISO_CODES_DIR)


@functools.cache  # a union of ~8k codes: once, not per checked code
def known_language_codes() -> frozenset[str]:
    """The base language codes checked against: ISO 639-1 (embedded) and, where the iso-codes
    package is installed, every ISO 639-2/639-3/639-5 code."""
    tables = _iso_tables()
    return ISO_639_1 | SPECIAL_CODES | (tables[0] if tables else frozenset())


def check_language_code(code: Any, extra_languages: Collection[str] = ()) -> str | None:
    """None if `code` is an accepted language code, else what is wrong with it and a hint.

    Accepted: a code in `extra_languages`, or a tag whose language part is a known ISO 639 code
    (see `known_language_codes`), e.g. `en`, `kmr`, `pt_BR`, `pt-BR`, `zh_Hant`, `sr@latin`,
    `ca@valencia`, `eng_Latn`. Case matters: `EN` and `pt-br` would form separate groups.
    """
    if not isinstance(code, str):
        return f"expected a language code string, got {type(code).__name__}"
    if code in extra_languages:
        return None
    match = _LANGUAGE_TAG.fullmatch(code)
    if match is not None:
        language = match["language"]
        if language in extra_languages or language in known_language_codes():
            return None
        if len(language) == 3 and _iso_tables() is None:
            _warn_unchecked()
            return None
    hint = _language_hint(code, extra_languages)
    if match is None:
        problem = f"{code!r} is not a language code (expected an {_TAG_SHAPE})"
    else:
        problem = f"{match['language']!r} is not an ISO 639-1/639-3 code"
    return f"{problem}{hint}; list other codes in extra_languages to accept them"


def _language_hint(code: str, extra_languages: Collection[str]) -> str:
    # Normalise the case of each part: EN -> en, pt-br -> pt-BR, zh_hant -> zh_Hant.
    parts = re.split(r"([_-])", code)
    fixed = [parts[0].lower()]
    for i in range(2, len(parts), 2):
        p = parts[i]
        fixed += [parts[i - 1], p.title() if len(p) == 4 else p.upper() if len(p) == 2 else p]
    candidate = "".join(fixed)
    if candidate != code and check_language_code(candidate, extra_languages) is None:
        return f" (did you mean {candidate!r}?)"
    tables = _iso_tables()  # a language name instead of a code: English -> en
    by_name = tables[1] if tables else {}
    if code.lower() in by_name:
        return f" (did you mean {by_name[code.lower()]!r}?)"
    return ""


# ---------------------------------------------------------------------------------------------
# Column-wise checks on records


def _invalid_utf8_rows(chunk: pa.Array) -> list[int]:
    """Row indices (within the chunk) whose bytes are not UTF-8; Python-level, so only run on a
    chunk that Arrow has already found to contain some."""
    bad = []
    for i, value in enumerate(chunk.to_pylist()):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
    return bad


def _blank(values: pa.ChunkedArray) -> np.ndarray:
    """Mask of empty or whitespace-only strings (nulls are not blank)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    return np.concatenate([_blank_chunk(c) for c in chunks] or [np.zeros(0, dtype=bool)])


def _blank_chunk(chunk: pa.Array) -> np.ndarray:
    # Only a string that is empty or starts with an ASCII space/control byte or a non-ASCII
    # byte can be blank: the first bytes are read from the buffers (numpy, no copy), and
    # utf8_is_space, which scans whole strings, runs on those candidates alone.
    n = len(chunk)
    _, offsets_buf, data_buf = chunk.buffers()
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=width)[chunk.offset : chunk.offset + n + 1]
    starts, lengths = offsets[:-1], np.diff(offsets)
    first = np.zeros(n, dtype=np.uint8)
    if data_buf is not None and len(data_buf):
        data = np.frombuffer(data_buf, dtype=np.uint8)
        first[lengths > 0] = data[starts[lengths > 0]]
    maybe = (lengths == 0) | (first <= 0x20) | (first >= 0x80)
    if chunk.null_count:
        maybe &= chunk.is_valid().to_numpy(zero_copy_only=False)
    blank = np.zeros(n, dtype=bool)
    where = np.flatnonzero(maybe)
    if len(where):
        some = chunk.take(pa.array(where))
        blank[where] = pc.or_(pc.equal(pc.utf8_length(some), 0), pc.utf8_is_space(some)
                              ).fill_null(False).to_numpy(zero_copy_only=False)
    return blank


@dataclass
class _Check:
    """Rows failing one check, how to name the field of a row, and a detail per row."""

    reason: str
    mask: np.ndarray
    field: Callable[[int], str]
    detail: Callable[[int], str] = lambda _: ""


class RecordChecker:
    """Checks records of one file column-wise (pyarrow.compute), and raises on the first bad
    record or drops and counts bad records, per `on_bad_record`.

    `check` takes a table with columns `query`, `passage`, `negative_1..N` (contiguous), the
    language column if any and extra columns; `field_names` maps a column to the name the file
    uses (e.g. `passage` -> `positive`) so messages point at what the user wrote.
    """

    def __init__(
        self,
        file: str | Path,
        fmt: Format,
        num_negatives: int,
        on_bad_record: OnBadRecord,
        report: SkipReport,
        row_kind: RowKind = "row",
        language_column: str | None = None,
        extra_columns: Sequence[str] = (),
        extra_languages: Collection[str] = (),
        field_names: dict[str, str] | None = None,
    ) -> None:
        self.file, self.format, self.num_negatives = str(file), fmt, num_negatives
        self.on_bad_record, self.report, self.row_kind = on_bad_record, report, row_kind
        self.language_column, self.extra_columns = language_column, list(extra_columns)
        self.extra_languages = frozenset(extra_languages)
        self.field_names = dict(field_names or {})

    def name(self, column: str) -> str:
        return self.field_names.get(column, column)

    def error(self, reason: str, detail: str = "", row: int | None = None,
              field: str | None = None) -> DataError:
        return DataError(self.file, reason, detail, row, field, self.row_kind)

    def reject(self, row: int, reason: str, field: str | None = None, detail: str = "") -> None:
        """A record found bad while parsing it: raise, or count it as read and skipped."""
        if self.on_bad_record == "raise":
            raise self.error(reason, detail, row, field)
        self.report.add_records(self.file, 1)
        example = location(row, self.row_kind) + (f", field {field!r}" if field else "")
        self.report.add(self.file, reason, 1, [example])

    def string_column(self, column: pa.ChunkedArray, name: str,
                      rows: np.ndarray | None = None) -> tuple[pa.ChunkedArray, np.ndarray]:
        """`column` as UTF-8 strings with undecodable values blanked, and the mask of those.

        Binary columns are decoded; any other type is a file-level error (a parquet column has
        one type for all rows).
        """
        chunks, bad = [], np.zeros(len(column), dtype=bool)
        offset = 0
        for chunk in column.chunks:
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            t = chunk.type
            if pa.types.is_null(t):
                chunk = pa.nulls(len(chunk), pa.string())
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                try:
                    chunk.validate(full=True)  # includes the UTF-8 check
                except pa.ArrowInvalid:
                    binary = pa.large_binary() if pa.types.is_large_string(t) else pa.binary()
                    chunk = self._null_rows(chunk.view(binary), bad, offset)
            elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
                try:
                    chunk = chunk.cast(pa.string())
                except pa.ArrowInvalid:
                    chunk = self._null_rows(chunk, bad, offset)
            else:
                valid = np.flatnonzero(~column.is_null().to_numpy())
                first = int(valid[0]) if len(valid) else 0
                raise self.error(WRONG_TYPE, f"the column holds {t}, expected string",
                                 self._row(first, rows), self.name(name))
            if not pa.types.is_string(chunk.type):
                chunk = chunk.cast(pa.string())
            chunks.append(chunk)
            offset += len(chunk)
        return pa.chunked_array(chunks, pa.string()), bad

    @staticmethod
    def _null_rows(chunk: pa.Array, bad: np.ndarray, offset: int) -> pa.Array:
        rows = _invalid_utf8_rows(chunk)
        bad[[offset + r for r in rows]] = True
        mask = np.zeros(len(chunk), dtype=bool)
        mask[rows] = True
        # Blanked, not nulled: a null slot keeps its bytes, which string kernels still decode.
        return pc.if_else(pa.array(mask), pa.scalar(b"", chunk.type), chunk).cast(pa.string())

    def _row(self, i: int, rows: np.ndarray | None) -> int:
        return int(rows[i]) if rows is not None else i

    def check(self, table: pa.Table, rows: np.ndarray | None = None) -> tuple[pa.Table, int]:
        """(the good records with string columns, the fewest negatives any of them has).

        `rows[i]` is the line or row number of record i in the file (default: i).
        """
        n = table.num_rows
        columns: dict[str, pa.ChunkedArray] = {}
        checks: list[_Check] = []

        def constant(field_name: str) -> Callable[[int], str]:
            return lambda _: field_name

        def text(column: str, allow_empty: bool = False) -> np.ndarray:
            values, bad_utf8 = self.string_column(table.column(column), column, rows)
            columns[column] = values
            field_name = constant(self.name(column))
            checks.append(_Check(INVALID_UTF8, bad_utf8, field_name))
            missing = values.is_null().to_numpy() & ~bad_utf8
            if not allow_empty:
                checks.append(_Check(MISSING_FIELD, missing, field_name,
                                     lambda _: "absent or null"))
                checks.append(_Check(EMPTY_STRING, _blank(values), field_name))
            return ~missing & ~bad_utf8

        text("query")
        text("passage")
        negatives = sorted((c for c in table.column_names if c.startswith("negative_")),
                           key=lambda c: int(c.split("_")[1]))
        present = [text(c, allow_empty=True) for c in negatives]
        # Empty negatives are errors; null ones are absent (rows may store fewer negatives).
        for c, p in zip(negatives, present, strict=True):
            checks.append(_Check(EMPTY_STRING, _blank(columns[c]) & p, constant(self.name(c))))
        count = np.zeros(n, dtype=np.int64)  # leading present negatives
        alive = np.ones(n, dtype=bool)
        total = np.zeros(n, dtype=np.int64)
        for p in present:
            alive &= p
            count += alive
            total += p

        def next_negative(i: int) -> str:
            return self.name(f"negative_{count[i] + 1}")

        fmt, need = self.format, self.num_negatives
        checks.append(_Check(MISSING_FIELD, total > count, next_negative,
                             lambda _: "a later negative is present; negatives are numbered "
                                       "without gaps"))
        checks.append(_Check(TOO_FEW_NEGATIVES, count < need, next_negative,
                             lambda i: f"{count[i]} stored, {fmt.name} needs {need}"))
        checks.append(_Check(TOO_MANY_NEGATIVES, count > fmt.max_negatives,
                             constant(self.name(f"negative_{fmt.max_negatives + 1}")),
                             lambda i: f"{count[i]} stored, {fmt.name} takes at most "
                                       f"{fmt.max_negatives}"))
        if self.language_column is not None:
            text(self.language_column)
            values = columns[self.language_column]
            field_name = constant(self.name(self.language_column))
            for code in pc.unique(values).drop_null().to_pylist():
                problem = check_language_code(code, self.extra_languages)
                if problem is not None:
                    mask = pc.equal(values, code).fill_null(False).to_numpy()
                    checks.append(_Check(f"{UNKNOWN_LANGUAGE} {code!r}", mask, field_name,
                                         lambda _, p=problem: p))
        for c in self.extra_columns:
            text(c, allow_empty=True)

        bad = self._apply(checks, n, rows)
        self.report.add_records(self.file, n)
        keep = ~bad
        fewest = int(count[keep].min()) if keep.any() else 0
        out = pa.table({c: columns.get(c, table.column(c)) for c in table.column_names})
        if bad.any():
            out = out.filter(pa.array(keep))
        return out, fewest

    def _apply(self, checks: list[_Check], n: int, rows: np.ndarray | None) -> np.ndarray:
        """Raise for the first failing row (the first failing check within it), or count each
        bad row once under its first failing check; return the mask of bad rows."""
        if self.on_bad_record == "raise":
            first: tuple[int, _Check] | None = None
            for check in checks:
                if check.mask.any():
                    i = int(np.argmax(check.mask))
                    if first is None or i < first[0]:
                        first = (i, check)
            if first is not None:
                i, check = first
                raise self.error(check.reason, check.detail(i), self._row(i, rows),
                                 check.field(i))
            return np.zeros(n, dtype=bool)
        bad = np.zeros(n, dtype=bool)
        for check in checks:
            new = check.mask & ~bad
            count = int(new.sum())
            if count:
                examples = [f"{location(self._row(i, rows), self.row_kind)}, field "
                            f"{check.field(i)!r}"
                            for i in np.flatnonzero(new)[: self.report.max_examples].tolist()]
                self.report.add(self.file, check.reason, count, examples)
                bad |= new
        return bad
