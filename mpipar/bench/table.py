"""The one table printer of the benchmarks: columns (header, cell format, alignment), rows of values.

    columns = [Column("size", format_bytes), Column("algorithm", align="<"),
               Column("median", format_seconds)]
    print(format_table(columns, [[4096, "ring", 1.2e-4], [None, "mpi", 9.8e-5]],
                       title="allreduce on 4 rank(s)"))

    == allreduce on 4 rank(s) =========
       size  algorithm  median
      4 KiB  ring       120 us
             mpi        98 us

A cell that is None is left blank, a str is written as it is, any other value goes
through its column's format. Every column is as wide as its widest cell or header.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column of a table."""

    header: str  #: the name on the header line ("" on every column: no header line)
    format: object = str  #: value -> text, for cells that are not text already
    align: str = ">"  #: ">" right (numbers), "<" left (names)
    width: int = 0  #: at least this many characters


def cell_text(column, value):
    """What one cell shows."""
    if value is None:
        return ""
    return value if isinstance(value, str) else column.format(value)


def format_table(columns, rows, title=None, rule=None, indent="", gap=2):
    """``rows`` (sequences of one value per column) as aligned lines of text.

    Above them: ``title`` as "== title ====" across the table's width, the header
    line, and a line of ``rule`` characters (e.g. "-") under it. ``indent`` starts
    every line; ``gap`` spaces separate the columns.
    """
    texts = [[cell_text(c, v) for c, v in zip(columns, row)] for row in rows]
    widths = [max([c.width, len(c.header)] + [len(t[i]) for t in texts]) for i, c in enumerate(columns)]

    def line(cells):
        joined = (" " * gap).join(f"{t:{c.align}{w}}" for c, w, t in zip(columns, widths, cells))
        return (indent + joined).rstrip()

    head = [line([c.header for c in columns])] if any(c.header for c in columns) else []
    body = [line(t) for t in texts]
    width = max(map(len, head + body), default=0)
    lines = [] if title is None else [f"== {title} " + "=" * max(0, width - len(title) - 4)]
    lines += head
    if rule and head:
        lines.append(indent + rule * (width - len(indent)))
    return "\n".join(lines + body)
