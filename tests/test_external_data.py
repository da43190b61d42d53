"""ONNX external data (#29.7): a tensor's `location` must name a file in the model's own folder.

A crafted artifact whose initializer keeps its data in `../../../../etc/passwd` (or an absolute path, or
a link out of the folder) is refused by clipscan itself before ONNX Runtime opens the file: older
onnxruntime releases read such locations and the scan's embedding then carried the file's bytes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import set_external_data
from PIL import Image

from clipscan.cli import main
from clipscan.runtime import ModelError, Scanner, load_artifact
from clipscan.runtime.artifact import DEMO_MODEL
from clipscan.runtime.onnx_meta import external_data_locations

DEPTH = "../" * 12


def crafted(folder, location: str, name: str = "evil.onnx"):
    """The demo artifact with its largest initializer's bytes moved to `location` (nothing written there)."""
    model = onnx.load(str(DEMO_MODEL))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(tensor.raw_data)
    set_external_data(tensor, location=location, offset=0, length=length)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    path = folder / name
    onnx.save(model, str(path))
    return path, tensor.name


@pytest.fixture
def sessions(monkeypatch):
    """Every model ONNX Runtime is asked to open in this process."""
    import onnxruntime as ort

    opened = []
    original = ort.InferenceSession.__init__

    def init(self, path_or_bytes, *args, **kwargs):
        opened.append(path_or_bytes)
        original(self, path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", init)
    return opened


def _png(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("location, why", [
    (DEPTH + "etc/passwd", "climbs out of the model's folder"),
    ("/etc/passwd", "an absolute path"),
    ("sub/../../x.bin", "climbs out"),
    ("C:\\Windows\\win.ini", "an absolute path"),
    ("", "an empty location"),
    ("data\n.bin", "control characters"),
])
def test_escaping_locations_are_refused_before_onnxruntime(tmp_path, capsys, sessions, location, why):
    path, tensor = crafted(tmp_path, location)
    assert (tensor, location) in external_data_locations(path)
    out = tmp_path / "rows.jsonl"
    assert main(["scan", "-m", str(path), str(_png(tmp_path)), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and repr(tensor) in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    with pytest.raises(ModelError, match=why):
        Scanner(path)
    assert sessions == [], "onnxruntime must never see the crafted file"


def test_a_link_out_of_the_folder_is_refused(tmp_path, sessions):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 20000)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(secret)
    path, _ = crafted(folder, "weights.bin")
    with pytest.raises(ModelError, match=r"a link that leads out of the model's folder \(to .*secret.txt\)"):
        load_artifact(path)
    assert main(["info", str(path)]) == 2
    assert sessions == []


def test_a_missing_data_file_is_named(tmp_path):
    path, tensor = crafted(tmp_path, "nowhere.bin")
    with pytest.raises(ModelError, match=rf"{tensor!r} keeps its data in 'nowhere.bin', a file that does not exist"):
        load_artifact(path)


def test_external_data_next_to_the_model_still_works(tmp_path, sessions):
    """A large model saved the ordinary way (its weights in a file beside it) scans as before."""
    model = onnx.load(str(DEMO_MODEL))
    (tmp_path / "sub").mkdir()
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="sub/big.onnx.data", size_threshold=1024)
    assert {loc for _, loc in external_data_locations(path)} == {"sub/big.onnx.data"}
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    with Scanner(path) as scanner, Scanner(DEMO_MODEL) as reference:
        got, want = scanner.scan_image(img), reference.scan_image(img)
    assert got.error is None and got.p_generated == pytest.approx(want.p_generated, abs=1e-6)
    assert sessions, "the external-data model ran through onnxruntime"
    assert external_data_locations(DEMO_MODEL) == []


def _sparse_escape(folder, location: str):
    """A small model whose sparse initializer's values live at `location`."""
    from onnx import TensorProto, helper
    values = helper.make_tensor("values", TensorProto.UINT8, [8], b"\0" * 8, raw=True)
    set_external_data(values, location=location, offset=0, length=8)
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("idx", TensorProto.INT64, [8], list(range(8))), [8])
    graph = helper.make_graph([helper.make_node("Identity", ["values"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [8])], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "sparse.onnx"
    onnx.save(model, str(path))
    return path


def test_sparse_initializers_are_checked_too(tmp_path):
    from clipscan.runtime.artifact import check_external_data
    path = _sparse_escape(tmp_path, DEPTH + "etc/passwd")
    assert external_data_locations(path) == [("values", DEPTH + "etc/passwd")]
    with pytest.raises(ModelError, match="'values' keeps its data in .*climbs out"):
        check_external_data(path.resolve())


def test_the_onnxruntime_floor_refuses_escapes_itself(tmp_path):
    """pyproject's floor is a release that refuses these files on its own (1.23 read all of them; 1.24-1.26
    still read a sparse initializer's); the installed onnxruntime is at or above it and does refuse them."""
    import re
    import tomllib

    import onnxruntime as ort

    from .conftest import REPO
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(tuple(map(int, m.groups())) for d in deps if (m := re.fullmatch(r"onnxruntime>=(\d+)\.(\d+)", d)))
    assert floor >= (1, 27)
    assert tuple(map(int, ort.__version__.split(".")[:2])) >= floor
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"root:x:0:0" * 1000)
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    dense, _ = crafted(folder, "../../secret.bin")
    for path in (dense, _sparse_escape(folder, "../../secret.bin")):
        with pytest.raises(Exception, match="(?i)external data|escapes"):
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
