"""The weight manifest: written once, verified at worker start, every kind of tampering named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chronoedit_core.manifest import MANIFEST_NAME, ManifestError, build_manifest, verify_manifest, write_manifest


@pytest.fixture
def model(tiny_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    write_manifest(copy)
    return copy


def test_manifest_lists_every_weight_file_and_verifies(model: Path) -> None:
    manifest = verify_manifest(model)
    assert "transformer/diffusion_pytorch_model.safetensors" in manifest.files
    on_disk = {str(p.relative_to(model)) for p in model.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    assert set(manifest.files) == on_disk, "weights, LoRAs, configs and tokenizer: every file"
    assert "loras/paintbrush.safetensors" in manifest.files
    assert len(manifest.digest) == 64 and manifest.digest == build_manifest(model).digest


@pytest.mark.parametrize("tamper", ["flip_a_byte", "delete", "add"])
def test_tampering_is_named(model: Path, tamper: str) -> None:
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    if tamper == "flip_a_byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        expected = "SHA-256 differs: vae/"
    elif tamper == "delete":
        weights.unlink()
        expected = "missing: vae/"
    else:
        (model / "vae" / "extra.safetensors").write_bytes(b"x")
        expected = "not in the manifest: vae/extra.safetensors"
    with pytest.raises(ManifestError, match=expected) as error:
        verify_manifest(model)
    assert error.value.code == "manifest_mismatch"


def test_missing_manifest_says_how_to_write_it(model: Path) -> None:
    (model / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="chronoedit manifest"):
        verify_manifest(model)
