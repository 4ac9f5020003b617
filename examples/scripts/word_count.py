#!/usr/bin/env python3
"""Counts lines, words and characters of the given text; reports progress per line."""

import json
import sys

args = json.load(sys.stdin)
lines = args["text"].splitlines() or [""]
words = chars = 0
for number, line in enumerate(lines, 1):
    words += len(line.split())
    chars += len(line)
    print(f"::progress {number / len(lines):.3f} line {number} of {len(lines)}")
print(json.dumps({"lines": len(lines), "words": words, "characters": chars}))
