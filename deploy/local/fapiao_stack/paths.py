"""Where the local stack keeps jars, data and logs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
RUN_DIR = Path(os.environ.get("FAPIAO_RUN_DIR", REPO_ROOT / ".run"))
LOG_DIR = RUN_DIR / "logs"
KAFKA_POM_DIR = REPO_ROOT / "deploy" / "local" / "kafka"
KAFKA_LIBS = REPO_ROOT / ".cache" / "kafka" / "libs"
