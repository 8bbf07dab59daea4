"""stub"""
from __future__ import annotations
NAME = "jsonl"

def sniff(lines):
    return 0

def parse(lines, ctx):
    return iter(())
