"""Where the local stack keeps jars, data and logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_DIR = Path(os.environ.get("FAPIAO_RUN_DIR", REPO_ROOT / ".run"))
LOG_DIR = RUN_DIR / "logs"
KAFKA_POM_DIR = REPO_ROOT / "deploy" / "local" / "kafka"
KAFKA_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"
STATE_FILE = RUN_DIR / "stack.json"


def port_offset() -> int:
    """FAPIAO_PORT_OFFSET when set; else the offset the stack running from RUN_DIR was started with (its
    stack.json records it), so later commands (`status`, `restart`, the demo) find its ports; else 0."""
    explicit = os.environ.get("FAPIAO_PORT_OFFSET", "")
    if explicit:
        return int(explicit)
    try:
        recorded = json.loads(STATE_FILE.read_text()).get("port_offset", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return int(recorded) if isinstance(recorded, int) else 0
