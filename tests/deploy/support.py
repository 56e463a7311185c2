"""Loading the deployment scripts of deploy/containers and deploy/k8s (plain scripts, not packages)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "deploy" / "containers"
K8S = REPO / "deploy" / "k8s"
COMPOSE_FILE = REPO / "deploy" / "compose" / "compose.yaml"


def load_script(path: Path) -> ModuleType:
    """Import the script at `path` as a module named after its file (once per test run)."""
    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
