"""Class-name lists: files (``.tsv`` index/wnid/name tables or one name per line) and constants.

A class list maps a model output index ``k`` to a human name ``names[k]``.
"""

from __future__ import annotations

from pathlib import Path

from qcompile.data.errors import DataError

__all__ = ["CIFAR10_CLASSES", "cifar10_classes", "load_labels"]

#: CIFAR-10 class names in label order 0..9 (shared/data/README.md).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def cifar10_classes() -> list[str]:
    """A fresh list of the 10 CIFAR-10 class names, index 0..9."""
    return list(CIFAR10_CLASSES)


def load_labels(path: str | Path) -> list[str]:
    """Read a class-name list.

    Two formats are recognised by content, not extension:

    * tab-separated rows (every non-empty line has a tab), e.g. ``imagenet_classes.tsv``:
      ``index<TAB>wnid<TAB>name``.  The name is the LAST column; if the first column is an
      integer it is the class index and the rows must cover ``0..K-1`` exactly once (in any
      order).  A header row whose first cell is not an integer is skipped.
    * plain text, one name per line, line ``k`` (0-based) naming class ``k``; leading and
      trailing blank lines are dropped, but a blank line in the middle is an error because it
      would silently shift every later index.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data: label file {p} does not exist; pass a .tsv or one-name-per-line .txt")
    if not p.is_file():
        raise DataError(f"data: label file {p} is not a file; pass a .tsv or .txt class list")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"data: cannot read label file {p} ({exc}); save it as UTF-8 text") from None
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise DataError(f"data: label file {p} is empty; expected one class name per line")
    if all("\t" in ln for ln in lines if ln.strip()):
        return _parse_table(p, lines)
    for k, ln in enumerate(lines):
        if not ln.strip():
            raise DataError(f"data: label file {p} has a blank line {k + 1}; "
                            "write exactly one class name per line")
    return [ln.strip() for ln in lines]


def _parse_table(p: Path, lines: list[str]) -> list[str]:
    rows = [[c.strip() for c in ln.split("\t")] for ln in lines if ln.strip()]
    if rows and not _is_int(rows[0][0]) and len(rows) > 1 and _is_int(rows[1][0]):
        rows = rows[1:]  # header line such as "index\twnid\tname"
    if not all(_is_int(r[0]) for r in rows) or all(len(r) == 1 for r in rows):
        return [r[-1] for r in rows]  # no index column: order of rows is the class order
    names: dict[int, str] = {}
    for lineno, row in enumerate(rows, 1):
        idx = int(row[0])
        if idx in names:
            raise DataError(f"data: label file {p} lists class index {idx} twice (row {lineno}); "
                            "each index 0..K-1 must appear once")
        names[idx] = row[-1]
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))[:5]
        raise DataError(f"data: label file {p} does not cover indices 0..{len(names) - 1} "
                        f"(missing e.g. {missing}); number the classes from 0 without gaps")
    return [names[k] for k in range(len(names))]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
