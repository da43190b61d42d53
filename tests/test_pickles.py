"""Checkpoints run nothing (#29.8): every weight and head file is read with torch.load(weights_only=True) or
safetensors, and nothing else. A pickle whose payload would create a file, handed to each option that reads
one, creates nothing and ends in one sentence; also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set, and also where
the restricted load raises TypeError (what open_clip answered with a plain, unrestricted torch.load)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from clipscan.cli import main
from clipscan.export.choices import FILELESS_HEAD_FORMATS
from clipscan.export.deps import load_state_dict, load_torch_file
from clipscan.export.importers import IMPORTERS
from clipscan.runtime.errors import ClipscanError

MARKER_NAME = "payload-ran"


class Payload:
    """Unpickled without restriction, this creates the marker file (a real effect, not a mock)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def payload_files(folder) -> dict:
    """Crafted checkpoints, each writing folder/MARKER_NAME when unpickled without restriction."""
    marker = folder / MARKER_NAME
    files = {}
    files["zip"] = folder / "evil.pt"         # torch.save's format: tensors next to the payload
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}, "extra": Payload(marker)}, str(files["zip"]))
    files["legacy"] = folder / "evil_legacy.pth"   # a bare pickle stream, as torch.save wrote before 1.6
    with open(files["legacy"], "wb") as f:
        pickle.dump({"weight": Payload(marker)}, f, protocol=2)
    return files


@pytest.fixture
def crafted(tmp_path):
    return payload_files(tmp_path), tmp_path / MARKER_NAME


def _argv(tiny, option: str, evil) -> list[str]:
    weights, heads = str(tiny["weights"]), str(tiny["heads"])
    if option == "--weights":
        weights = str(evil)
    head_args = ["--heads", str(evil)] if option == "--heads" else ["--heads", heads]
    if option.startswith("--head "):
        head_args = ["--head", f"{option.split()[1]}:{evil}"]
    return ["--arch", str(tiny["config"]), "--weights", weights, *head_args]


OPTIONS = ["--weights", "--heads", *(f"--head {fmt}" for fmt in sorted(IMPORTERS))]


@pytest.mark.parametrize("force_env", [False, True], ids=["plain", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"])
@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_export_and_verify_run_no_payload(tiny_model_files, exported, crafted, tmp_path, capsys, monkeypatch, force_env,
                                         kind):
    files, marker = crafted
    if force_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for option in OPTIONS:
        out = tmp_path / "out.onnx"
        assert main(["export", *_argv(tiny_model_files, option, files[kind]), "-o", str(out)]) == 2, option
        err = capsys.readouterr().err.strip()
        assert not marker.exists(), f"{option}: the payload ran"
        assert not out.exists()
        assert err.startswith("clipscan export: error: ") and str(files[kind]) in err, (option, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (option, err)
        # captions is a JSON file, and a format that reads no file refuses to be given one: neither unpickles
        if kind == "zip" and option not in ("--head captions", *(f"--head {f}" for f in FILELESS_HEAD_FORMATS)):
            assert "asks to build os.makedirs" in err and "weights_only=True" in err, (option, err)
    # verify reads the same files the same way (given as flags, they replace what the artifact's manifest records)
    for option in ("--weights", "--heads"):
        argv = ["verify", str(exported.path), "--images", str(tmp_path), *_argv(tiny_model_files, option, files[kind])]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert str(files[kind]) in err and len(err.splitlines()) == 1 and not marker.exists(), err


def test_no_fallback_when_the_restricted_load_raises_type_error(crafted, monkeypatch):
    """open_clip answered a TypeError from the restricted load with an unrestricted one; clipscan asks once."""
    files, marker = crafted
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only"):
            raise TypeError("an unpickler that cannot take weights_only (as torch < 1.13)")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    for reader in (load_torch_file, load_state_dict):
        with pytest.raises(ClipscanError, match="not a backbone checkpoint PyTorch can load"):
            reader(files["zip"], "backbone checkpoint")
    assert calls == [True, True] and not marker.exists()


def test_torch_older_than_the_floor_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    good = tmp_path / "w.pt"
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be reached"))
    with pytest.raises(ClipscanError, match=r"torch >= 2\.6.*this is torch 2\.5\.1"):
        load_torch_file(good, "backbone checkpoint")
    monkeypatch.setattr(torch, "load", real_load)


def test_safetensors_backbone_and_head_export(tiny_model_files, tmp_path):
    """Weights as .safetensors (backbone, and a published head's state dict) export and match PyTorch."""
    from safetensors.torch import save_file

    from clipscan.export import export_model
    from clipscan.runtime import Scanner
    from clipscan.runtime.preprocess import Preprocessor

    model = tiny_model_files["model"]
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    head = tmp_path / "univfd.safetensors"
    rng = torch.Generator().manual_seed(3)
    fc = {"fc.weight": torch.randn(1, 48, generator=rng) * 0.2, "fc.bias": torch.tensor([0.1])}
    save_file(fc, str(head))
    out = tmp_path / "st.onnx"
    export_model(str(tiny_model_files["config"]), weights, f"univfd:{head}", out, name="from-safetensors")
    img = __import__("PIL.Image", fromlist=["Image"]).fromarray(
        np.random.default_rng(5).integers(0, 256, (224, 224, 3), np.uint8))
    with Scanner(out) as scanner:
        got = scanner.scan_image(img)
        pixels = Preprocessor(scanner.manifest.preprocess, scanner.manifest.input).batch(img)
    with torch.no_grad():
        proj = model.encode_image(torch.from_numpy(pixels))
        want = torch.sigmoid(proj @ fc["fc.weight"].T + fc["fc.bias"]).item()
    assert got.error is None and got.p_generated == pytest.approx(want, abs=1e-4)
