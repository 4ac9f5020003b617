#!/usr/bin/env python3
"""Greets someone: reads its arguments as one JSON object on standard input."""

import json
import sys

args = json.load(sys.stdin)
print(f"::progress 0.5 composing the greeting")
print(f"Hello, {args.get('name', 'world')}!")
print("::progress 1.0 done")
