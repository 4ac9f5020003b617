#!/usr/bin/env python3
"""Fails until a marker file exists, to show retries: the first attempt creates it."""

import json
import pathlib
import sys

args = json.load(sys.stdin)
marker = pathlib.Path(args["marker"])
if not marker.exists():
    marker.write_text("tried once\n")
    print("first attempt fails on purpose", file=sys.stderr)
    sys.exit(3)
print("second attempt succeeds")
