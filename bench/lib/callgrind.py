#!/usr/bin/env python3
"""Inclusive instruction counts of named functions from a callgrind output file.

    callgrind.py FILE NAME...

prints "NAME COUNT" per name (0 when absent) and "totals COUNT" (everything collected). Standard
library only. A function's inclusive count is the cost of its own lines plus the cost callgrind
records for every call it makes (the line after each `calls=`), summed over all its blocks.
"""

import re
import sys


def inclusive(path, wanted):
    names = {}  # compressed name id -> name (fn= and cfn= share one table)
    counts = dict.fromkeys(wanted, 0)
    totals = None
    current = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                key, _, spec = line.rstrip("\n").partition("=")
                match = re.match(r"\((\d+)\)(?: (.*))?$", spec)
                if match:
                    ident, name = match.groups()
                    if name is not None:
                        names[ident] = name
                    name = names.get(ident, "")
                else:
                    name = spec
                if key == "fn":
                    current = name if name in counts else None
                continue
            if line.startswith("totals:"):
                totals = int(line.split()[1])
                continue
            # Cost lines start with a position: a number, or +N / -N / * when compressed. The line
            # after `calls=` is the call's inclusive cost; either way it belongs to the current function.
            if current is not None and line[:1] in "0123456789+-*":
                fields = line.split()
                if len(fields) > 1:
                    counts[current] += int(fields[1])
    return counts, totals


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    counts, totals = inclusive(sys.argv[1], sys.argv[2:])
    for name in sys.argv[2:]:
        print(f"{name} {counts[name]}")
    print(f"totals {totals if totals is not None else sum(counts.values())}")


if __name__ == "__main__":
    main()
