"""The package's layering, read statically from every import in the source (lazy ones inside functions too).

    runtime  <-  export  <-  calibration  <-  bench  <-  cli
    runtime  <-  serve, report, triton (runtime-only services on top of the Scanner)  <-  bench, cli
    report (its HTML toolkit, html_kit)  <-  calibration (the fidelity report page)
    runtime  <-  distributed (batch scanning on Ray; ray itself is an extra)  <-  bench, cli
    measure (fidelity bars, machine description, timing; imports only the runtime's errors)
             <-  export, calibration, bench, cli
    runtime, report  <-  evaluation (metrics from scikit-learn and scipy, its extra; no torch, no onnx)  <-  cli

The runtime (what `pip install clipscan` gives) imports nothing above it, nor torch, open_clip,
onnx or matplotlib, and neither do the runtime-only packages; measure imports none of them
either, and the runtime-only packages do not import measure (scanning judges nothing);
each package imports only the ones DEPENDS lists for it; nothing imports a private module
or a private name of another package; there is no import cycle; no package file is over 450 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

# folder -> package, as pyproject.toml maps them
PACKAGES = {"clipscan": "clipscan", "runtime": "clipscan.runtime", "measure": "clipscan.measure",
            "export": "clipscan.export",
            "calibration": "clipscan.calibration", "bench": "clipscan.bench", "serve": "clipscan.serve",
            "report": "clipscan.report", "distributed": "clipscan.distributed",
            "triton_repo": "clipscan.triton",  # not triton/: that name would shadow the `triton` package torch imports
            "evaluation": "clipscan.evaluation"}
# package -> the clipscan packages it may import (besides itself and the top-level clipscan.version)
RT, ME, EX, CA, BE, SE, RE, TR, DI = ("clipscan.runtime", "clipscan.measure", "clipscan.export",
                                      "clipscan.calibration", "clipscan.bench", "clipscan.serve", "clipscan.report",
                                      "clipscan.triton", "clipscan.distributed")
EV = "clipscan.evaluation"
DEPENDS = {
    RT: set(),
    ME: {RT},  # the runtime's error classes only
    EX: {RT, ME},
    SE: {RT},
    RE: {RT},
    TR: {RT},
    DI: {RT},
    EV: {RT, RE},
    CA: {RT, ME, EX, RE},  # RE: the HTML toolkit (report.html_kit) of the fidelity report page
    BE: {RT, ME, EX, CA, SE, DI, TR},  # TR: the Triton repository and server of `bench --serve --triton`
    "clipscan.cli": {RT, ME, EX, CA, BE, SE, RE, TR, DI, EV},
}
RUNTIME_ONLY = {RT, SE, RE, TR, DI}  # what must work in an install without torch, onnx or matplotlib
TORCH_FREE = RUNTIME_ONLY | {ME}     # measure is shared by the torch layers but needs no torch itself
ABOVE_THE_RUNTIME = {EX, CA, BE, ME}  # what the runtime-only packages never import
HEAVY = ("torch", "torchvision", "open_clip", "onnx", "onnxscript", "matplotlib", "scipy", "skimage")
# the evaluation package is the runtime plus the `evaluate` extra (scikit-learn, scipy): nothing else heavy
EVALUATION_EXTRA = ("sklearn", "scipy")
MAX_LINES = 450


def package_files() -> dict[str, Path]:
    """module name -> file, for every .py file of the distribution."""
    out = {}
    for folder, package in PACKAGES.items():
        root = REPO / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import statement and every
    importlib.import_module / __import__ / require call with a literal name in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, "", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in known else (target, alias.name, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__", "require"):  # require: export.deps, an import with a hint
                out.append((node.args[0].value, "", node.lineno))
    return out


def graph():
    files = package_files()
    known = set(files)
    edges = {m: imports_of(m, p, known) for m, p in files.items()}
    return files, edges


def layer_of(module: str) -> str | None:
    """The DEPENDS entry a module belongs to (the longest matching prefix), None for clipscan's top level."""
    for prefix in sorted(DEPENDS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def package_of(module: str) -> str:
    for prefix in sorted(PACKAGES.values(), key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module.split(".")[0]


def test_the_graph_is_read():
    files, edges = graph()
    assert {"clipscan.runtime.scanner", "clipscan.export.exporter", "clipscan.calibration.verify",
            "clipscan.measure.machine"} <= set(files)
    assert any(t == "clipscan.runtime.decode" for t, _, _ in edges["clipscan.runtime.scanner"]), "relative imports"
    assert any(t == "torch" for t, _, _ in edges["clipscan.export.backbone"]), "lazy imports by name count too"


def test_each_layer_imports_only_layers_below_it():
    _, edges = graph()
    wrong = []
    for module, targets in edges.items():
        mine = layer_of(module)
        for target, _, line in targets:
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs != mine and theirs not in DEPENDS[mine]:
                wrong.append(f"{module}:{line} imports {target} ({mine} may import only {sorted(DEPENDS[mine])})")
    assert not wrong, "\n".join(wrong)


def test_the_runtime_and_measure_never_import_torch_or_build_tools():
    _, edges = graph()
    wrong = [f"{m}:{line} imports {t}" for m, targets in edges.items() if layer_of(m) in TORCH_FREE
             for t, _, line in targets if t.split(".")[0] in HEAVY]
    assert not wrong, "\n".join(wrong)


def test_the_runtime_never_imports_export_calibration_bench_or_measure():
    """Stated on its own (DEPENDS says it too), so that widening DEPENDS cannot quietly break it."""
    _, edges = graph()
    wrong = [f"{m}:{line} imports {t}" for m, targets in edges.items() if layer_of(m) in RUNTIME_ONLY
             for t, _, line in targets if layer_of(t) in ABOVE_THE_RUNTIME]
    assert not wrong, "\n".join(wrong)
    assert not any(ABOVE_THE_RUNTIME & DEPENDS[layer] for layer in RUNTIME_ONLY)


def test_evaluation_needs_only_the_runtime_and_its_extra():
    _, edges = graph()
    wrong = [f"{m}:{line} imports {t}" for m, targets in edges.items() if layer_of(m) == EV
             for t, _, line in targets if t.split(".")[0] in HEAVY and t.split(".")[0] not in EVALUATION_EXTRA]
    assert not wrong, "\n".join(wrong)


def test_no_private_module_or_name_of_another_package():
    _, edges = graph()
    wrong = []
    for module, targets in edges.items():
        for target, name, line in targets:
            if not target.startswith("clipscan") or package_of(target) == package_of(module):
                continue
            private_part = [p for p in target.split(".") if p.startswith("_")]
            if private_part or (name.startswith("_") and name not in ("__version__",)):
                wrong.append(f"{module}:{line} imports {target}{'.' + name if name else ''}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    files, edges = graph()
    adjacency = {m: sorted({t for t, _, _ in targets if t in files and t != m}) for m, targets in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in adjacency[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(adjacency):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_no_package_file_is_over_the_size_limit():
    files, _ = graph()
    long = {m: n for m, p in files.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
