"""The Containerfile and what the builds may read: runtime dependencies only, a CJK font the PDF renderer
looks for, the non-root user the compose and Kubernetes files expect, every COPY source let through."""

from __future__ import annotations

import re

import pytest
import yaml
from gateway.pdf import CJK_FONT_CANDIDATES

from tests.deploy.support import CONTAINERS, K8S, load_script

pytestmark = pytest.mark.unit

CONTAINERFILE = (CONTAINERS / "Containerfile").read_text()
compose_init = load_script(CONTAINERS / "compose_init.py")
# Where Debian's CJK font packages put the font file.
FONT_FILES = {
    "fonts-noto-cjk": "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "fonts-wqy-zenhei": "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "fonts-wqy-microhei": "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
}


def stage(name: str) -> str:
    match = re.search(rf"^FROM .* AS {name}\n(.*?)(?=^FROM |\Z)", CONTAINERFILE, re.M | re.S)
    assert match, name
    return match.group(1)


def test_the_services_get_the_runtime_dependencies_only() -> None:
    build = stage("build")
    assert re.search(r"/opt/fapiao/bin/pip install --quiet \. ", build)
    assert "[dev]" not in CONTAINERFILE and ".[" not in CONTAINERFILE
    assert "COPY --from=build /opt/protoc" not in stage("app")


def test_the_service_image_installs_a_cjk_font_the_pdf_renderer_looks_for() -> None:
    installed = [package for package in FONT_FILES if re.search(rf"\b{package}\b", stage("app"))]
    assert installed
    assert all(FONT_FILES[package] in CJK_FONT_CANDIDATES for package in installed)


def test_the_service_image_runs_as_the_user_compose_and_kubernetes_expect() -> None:
    assert f"USER {compose_init.SERVICE_UID}" in stage("app")
    assert f"--uid {compose_init.SERVICE_UID}" in stage("app")
    for path in (K8S / "ledger.yaml", K8S / "services.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] in ("Deployment", "StatefulSet"):
                context = document["spec"]["template"]["spec"]["securityContext"]
                assert context["runAsUser"] == compose_init.SERVICE_UID and context["runAsNonRoot"]


def test_the_base_image_is_a_build_argument() -> None:
    assert CONTAINERFILE.count("ARG BASE=localhost/fapiao-base:bookworm") == 1
    assert re.findall(r"^FROM \$\{BASE\} AS (\w+)", CONTAINERFILE, re.M) == ["python", "kafka", "postgres"]


def test_the_ignore_file_lets_through_every_copy_source_after_ignoring_everything() -> None:
    rules = [line for line in (CONTAINERS / "containerignore").read_text().splitlines() if line and line[0] != "#"]
    assert rules[0] == "**"
    allowed = [rule[1:].removesuffix("/**").removesuffix("**") for rule in rules if rule.startswith("!")]
    sources = [
        source
        for line in CONTAINERFILE.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    ]
    assert sources
    for source in sources:
        assert any(
            source == rule
            or source.startswith(rule.rstrip("/") + "/")
            or re.fullmatch(rule.replace("*", "[^/]*"), source)
            for rule in allowed
        ), source
