"""python -m fapiao_faults: the fault suite (see fapiao_faults.run)."""

import os
import sys
from pathlib import Path

# The suite runs its own stack: its own run directory, ports and namespaces, so it never faults a stack of
# `make up` or `fapiao up --hosts`.
_REPO = Path(__file__).resolve().parents[3]
os.environ.setdefault("FAPIAO_RUN_DIR", str(_REPO / "build" / "faults" / "run"))
os.environ.setdefault("FAPIAO_PORT_OFFSET", "600")
os.environ.setdefault("FAPIAO_CLUSTER_PREFIX", "fapiao-faults-")  # the multi-host cluster's namespaces

from fapiao_faults.run import main  # noqa: E402

sys.exit(main())
