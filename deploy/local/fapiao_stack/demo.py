"""`make demo`: the end-to-end story lives in fapiao_cli.demo (also `fapiao demo`)."""

from __future__ import annotations


def run_demo() -> int:
    from fapiao_cli.demo import run_demo as walk_story

    return walk_story()
