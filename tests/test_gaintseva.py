"""Gaintseva et al.'s robust probes: embedding-component removal folded into one Linear, and the
attention-head tap checked against hooks on open_clip's own forward (the decomposition adds up)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipscan.export import export_model
from clipscan.export.graph import TappedVisual
from clipscan.export.head_tap import head_contributions, through_ln_post
from clipscan.runtime import Scanner

from .conftest import photo_images

F = torch.nn.functional


def _pixels(n=4):
    import open_clip

    t = open_clip.image_transform(224, is_train=False)
    return torch.stack([t(img) for _, img in photo_images()[:n]])


def _hooked_terms(visual, x):
    """Every term of the CLS residual, from hooks on open_clip's own forward: the embeddings, each head of
    each layer (torch's MultiheadAttention weights per head, need_weights=True), each out_proj bias, each MLP."""
    captured = {"attn_in": [], "mlp_out": []}
    hooks = [visual.transformer.register_forward_pre_hook(lambda m, a: captured.__setitem__("x0", a[0]))]
    for block in visual.transformer.resblocks:
        hooks.append(block.attn.register_forward_pre_hook(lambda m, a, kw=None: captured["attn_in"].append(a[0]),
                                                           with_kwargs=False))
        hooks.append(block.mlp.register_forward_hook(lambda m, a, out: captured["mlp_out"].append(out)))
    hooks.append(visual.transformer.register_forward_hook(lambda m, a, out: captured.__setitem__("final", out)))
    try:
        with torch.no_grad():
            output = visual(x)
    finally:
        for h in hooks:
            h.remove()
    heads = {}
    for layer, (block, q_in) in enumerate(zip(visual.transformer.resblocks, captured["attn_in"])):
        attn = block.attn
        with torch.no_grad():
            _, weights = attn(q_in, q_in, q_in, need_weights=True, average_attn_weights=False)  # (B, H, N, N)
            width, n = q_in.shape[-1], attn.num_heads
            d = width // n
            v = F.linear(q_in, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
            for h in range(n):
                ctx = (weights[:, h, :1] @ v[..., h * d:(h + 1) * d])[:, 0]         # (B, d)
                heads[(layer, h)] = ctx @ attn.out_proj.weight[:, h * d:(h + 1) * d].T
    terms = [captured["x0"][:, 0]] + list(heads.values()) + \
        [b.attn.out_proj.bias.expand_as(captured["x0"][:, 0]) for b in visual.transformer.resblocks] + \
        [m[:, 0] for m in captured["mlp_out"]]
    return output, captured["final"][:, 0], heads, terms


@pytest.mark.parametrize("lean", [False, True])
def test_head_tap_matches_hooks_and_the_decomposition_adds_up(tiny_model_files, lean):
    visual = tiny_model_files["model"].visual.eval()
    x = _pixels()
    output, residual, heads, terms = _hooked_terms(visual, x)
    # the terms add up to open_clip's CLS residual, and through ln_post + proj to its output
    assert torch.allclose(sum(terms), residual, atol=1e-4)
    ln = visual.ln_post
    contributions = through_ln_post(visual, torch.stack(terms, 1), residual).sum(1) + ln.bias @ visual.proj
    assert F.cosine_similarity(contributions, output).min() > 0.999999
    # the tap, in the tower's own pass (lean or stock), against the hooks
    tower = TappedVisual(visual, lean=lean)
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        _, projected, seen, res = tower.forward_with_taps(x, set(layers))
        assert F.cosine_similarity(projected, output).min() > 0.999999
        for layer in layers:
            n = visual.transformer.resblocks[layer].attn.num_heads
            got = through_ln_post(visual, head_contributions(visual.transformer.resblocks[layer], seen[layer],
                                                             list(range(n))), res)
            want = through_ln_post(visual, torch.stack([heads[(layer, h)] for h in range(n)], 1), residual)
            cos = F.cosine_similarity(got.flatten(0, 1), want.flatten(0, 1))
            assert cos.min() >= 0.99999, (layer, cos.min())


def _probe_files(tmp_path, model, taps):
    g = torch.Generator().manual_seed(5)
    embed = model.visual.output_dim
    heads_file = tmp_path / "heads_probe.pt"
    torch.save({"heads": taps, "weight": torch.randn(1, embed * len(taps), generator=g) * 20,
                "bias": torch.tensor([0.1])}, str(heads_file))
    mask_file = tmp_path / "mask_probe.pt"
    removed = [0, 3, 5, 17]
    u = torch.randn(2, embed, generator=g)
    torch.save({"weight": torch.randn(1, embed, generator=g) * 5, "bias": torch.tensor([-0.2]),
                "removed": removed}, str(mask_file))
    dir_file = tmp_path / "dir_probe.pt"
    torch.save({"weight": torch.randn(1, embed, generator=g) * 5, "bias": 0.3, "directions": u}, str(dir_file))
    return heads_file, mask_file, dir_file, removed, u


def test_both_probes_export_on_one_pass_and_match_independent_references(tiny_model_files, tmp_path):
    model = tiny_model_files["model"].eval()
    taps = [[1, 0], [1, 1], [0, 1]]
    heads_file, mask_file, dir_file, removed, u = _probe_files(tmp_path, model, taps)
    out = tmp_path / "g.onnx"
    export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                 [f"gaintseva-heads:{heads_file}", f"gaintseva-mask:{mask_file}", f"dirs=gaintseva-mask:{dir_file}"],
                 out)
    with Scanner(out) as s:
        m = s.manifest
        assert [h.name for h in m.heads] == ["gaintseva_heads", "gaintseva_mask", "dirs"]
        assert m.heads[0].details == {"heads": taps}
        assert m.heads[1].details == {"removed": "coordinates", "coordinates": removed}
        assert m.heads[2].details["removed"] == "directions" and m.heads[2].details["count"] == 2
        x = _pixels()
        got = s.predict(x.numpy())
    # independent references in float64 from open_clip's encode_image and the hooks
    output, residual, heads, _ = _hooked_terms(model.visual, x)
    feats = torch.cat([through_ln_post(model.visual, heads[tuple(t)].unsqueeze(1), residual)[:, 0] for t in taps], -1)
    sd = torch.load(str(heads_file))
    want_heads = (feats.double() @ sd["weight"].double().T + sd["bias"].double()).squeeze(-1)
    emb = F.normalize(output, dim=-1).double()
    sd = torch.load(str(mask_file))
    keep = torch.ones(emb.shape[1], dtype=torch.float64)
    keep[removed] = 0
    want_mask = ((emb * keep) @ sd["weight"].double().T).squeeze(-1) + sd["bias"].double()
    sd = torch.load(str(dir_file))
    ud = u.double()
    projected_out = emb - (emb @ ud.T) @ torch.linalg.solve(ud @ ud.T, ud)
    want_dirs = (projected_out @ sd["weight"].double().T).squeeze(-1) + 0.3
    names = {h.name: h.outputs["logit"] for h in m.heads}
    for name, want in (("gaintseva_heads", want_heads), ("gaintseva_mask", want_mask), ("dirs", want_dirs)):
        np.testing.assert_allclose(got[names[name]], want.detach().numpy(), atol=2e-4, rtol=1e-4, err_msg=name)


def test_probe_files_that_do_not_fit_are_refused(tiny_model_files, tmp_path):
    cfg, w = str(tiny_model_files["config"]), tiny_model_files["weights"]
    bad = tmp_path / "bad.pt"
    torch.save({"heads": [[9, 0]], "weight": torch.zeros(1, 32), "bias": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match=r"do not exist in this tower"):
        export_model(cfg, w, f"gaintseva-heads:{bad}", tmp_path / "x.onnx")
    torch.save({"weight": torch.zeros(1, 7), "bias": torch.zeros(1), "removed": [1]}, str(bad))
    with pytest.raises(ValueError, match=r"needs weight \(1, "):
        export_model(cfg, w, f"gaintseva-mask:{bad}", tmp_path / "x.onnx")
    torch.save({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError):
        export_model(cfg, w, f"gaintseva-mask:{bad}", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_the_head_probe_survives_fp16(tiny_model_files, tmp_path):
    """FP16 export (its own gates against the PyTorch FP32 module include every head's outputs)."""
    model = tiny_model_files["model"].eval()
    heads_file, mask_file, _, _, _ = _probe_files(tmp_path, model, [[1, 0], [1, 1]])
    fp32, fp16 = tmp_path / "a32.onnx", tmp_path / "a16.onnx"
    for out, precision in ((fp32, "fp32"), (fp16, "fp16")):
        export_model(str(tiny_model_files["config"]), tiny_model_files["weights"],
                     [f"gaintseva-heads:{heads_file}", f"gaintseva-mask:{mask_file}"], out, precision=precision)
    x = _pixels().numpy()
    with Scanner(fp32) as a, Scanner(fp16) as b:
        ga, gb = a.predict(x), b.predict(x)
        assert b.manifest.precision == "fp16"
    for h in a.manifest.heads:
        np.testing.assert_allclose(gb[h.outputs["logit"]], ga[h.outputs["logit"]], atol=0.05 * max(
            1.0, float(np.abs(ga[h.outputs["logit"]]).max())), err_msg=h.name)


def test_every_head_answers_in_every_row_and_the_decision_is_chosen_at_export(tiny_model_files, image_dir, tmp_path):
    """Three detectors and a quality head on one pass: each row carries every head's own answer (JSONL
    `heads`, CSV `<head>_<field>` columns, ScanResult.heads); --primary and --ensemble pick the row's
    verdict and are recorded in the manifest."""
    import csv
    import json

    from clipscan.cli import main
    from clipscan.runtime.postprocess import decide

    model = tiny_model_files["model"].eval()
    heads_file, mask_file, dir_file, _, _ = _probe_files(tmp_path, model, [[1, 0]])
    cfg, weights = str(tiny_model_files["config"]), str(tiny_model_files["weights"])
    base = ["export", "--arch", cfg, "--weights", weights, "--heads", str(tiny_model_files["heads"]),
            "--head", f"gaintseva-heads:{heads_file}", "--head", f"gaintseva-mask:{mask_file}"]
    assert main(base + ["-o", str(tmp_path / "first.onnx")]) == 0
    assert main(base + ["-o", str(tmp_path / "primary.onnx"), "--primary", "gaintseva_mask"]) == 0
    assert main(base + ["-o", str(tmp_path / "any.onnx"), "--ensemble", "any"]) == 0
    assert main(base + ["-o", str(tmp_path / "bad.onnx"), "--primary", "nosuch"]) == 2
    assert not (tmp_path / "bad.onnx").exists()

    rows = {}
    for name in ("first", "primary", "any"):
        out = tmp_path / f"{name}.jsonl"
        assert main(["scan", str(image_dir), "-m", str(tmp_path / f"{name}.onnx"), "-o", str(out)]) in (0, 1)
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in rows["first"] if r["error"] is None]
    assert ok and all(set(r["heads"]) == {"detector", "quality", "gaintseva_heads", "gaintseva_mask"} for r in ok)
    for r in ok:   # the default primary is the first decision head
        assert (r["p_generated"], r["verdict"]) == (r["heads"]["detector"]["p_generated"], r["heads"]["detector"]["verdict"])
        assert r["quality"] == r["heads"]["quality"]["score"]
    for r in (x for x in rows["primary"] if x["error"] is None):
        assert r["logit"] == r["heads"]["gaintseva_mask"]["logit"]
    for r in (x for x in rows["any"] if x["error"] is None):
        said = [r["heads"][h]["verdict"] == "generated" for h in ("detector", "gaintseva_heads", "gaintseva_mask")]
        assert (r["verdict"] == "generated") == any(said)
        assert r["p_generated"] == max(r["heads"][h]["p_generated"] for h in ("detector", "gaintseva_heads",
                                                                              "gaintseva_mask"))
    with Scanner(tmp_path / "any.onnx") as s:
        assert s.manifest.decision == {"ensemble": "any", "threshold": 0.5}
        r = next(iter(s.scan([str(next(image_dir.glob("*.jpg")))])))
        assert r.heads["gaintseva_heads"]["verdict"] in ("real", "generated")
        mean = decide(type(s.manifest)(**{**s.manifest.__dict__, "decision": {"ensemble": "mean_logit",
                                                                                "threshold": 0.5}}), r.heads)
        logits = [r.heads[h]["logit"] for h in ("detector", "gaintseva_heads", "gaintseva_mask")]
        assert abs(mean["logit"] - sum(logits) / 3) < 1e-9
    out = tmp_path / "rows.csv"
    assert main(["scan", str(image_dir), "-m", str(tmp_path / "first.onnx"), "-o", str(out)]) in (0, 1)
    header = next(csv.reader(out.open()))
    assert {"gaintseva_heads_p_generated", "gaintseva_mask_verdict", "quality_score", "detector_logit"} <= set(header)


@pytest.mark.slow
def test_the_bar_four_detectors_on_one_pass_fp32_and_int8(tmp_path):
    """UnivFD, Cozzolino and both Gaintseva probes on one backbone pass (--resize-mode picks one resize
    for all): export, verify (FP32) and calibrate with its fidelity report (INT8) pass every head's gates,
    and each scan row carries every head's answer. INT8 keeps the probes' own nodes (the tap branches off
    inside the tower) in float with the tail, and ln_post stays the tail's start."""
    import json

    import onnx

    from clipscan.calibration import int8
    from clipscan.cli import main

    from .conftest import TINY_CONFIG, seeded_clip
    from .outlier_vit import write_image_sets

    f = seeded_clip(tmp_path, TINY_CONFIG, 7)
    g = torch.Generator().manual_seed(3)
    width, embed = TINY_CONFIG["vision_cfg"]["width"], TINY_CONFIG["embed_dim"]
    torch.save({"weight": torch.randn(1, embed, generator=g) * 3, "bias": torch.randn(1, generator=g)},
               str(tmp_path / "univfd.pth"))
    torch.save({"fc.weight": torch.randn(1, width, generator=g) * 3, "fc.bias": torch.randn(1, generator=g)},
               str(tmp_path / "cozzolino.pth"))
    heads_file, mask_file, _, _, _ = _probe_files(tmp_path, f["model"], [[1, 0], [1, 1]])
    heads = ["--head", f"univfd:{tmp_path / 'univfd.pth'}", "--head", f"cozzolino:{tmp_path / 'cozzolino.pth'}",
             "--head", f"gaintseva-heads:{heads_file}", "--head", f"gaintseva-mask:{mask_file}"]
    orig = ["--arch", str(f["config"]), "--weights", str(f["weights"]), *heads, "--resize-mode", "shortest"]
    fp32 = tmp_path / "four.onnx"
    assert main(["export", *orig, "-o", str(fp32)]) == 0
    graph = onnx.load(str(fp32))
    tail = set(int8.tail_nodes(graph))
    lns = [n.name for n in graph.graph.node if n.op_type == "LayerNormalization"]
    assert len(lns) == 1 + 2 * 2 + 1 + 1        # ln_pre, ln_1/ln_2 per layer, ln_post, the tap's ln_1 of layer 1
    in_tail = [n for n in lns if n in tail]
    assert in_tail == lns[-2:], "ln_post starts the tail (not the tap's ln_1) and the tap's ln_1 is in float too"
    assert set(int8._head_only_nodes(graph)) <= tail
    calib, val = write_image_sets(tmp_path, n_calib=16, n_val=40)
    # verify, calibrate and bench read the PyTorch original (the four heads, --resize-mode) from the manifest
    assert main(["verify", str(fp32), "--images", str(val), "--report", str(tmp_path / "v32"),
                 "--no-launder"]) == 0
    names = ("univfd", "cozzolino", "gaintseva_heads", "gaintseva_mask")
    gates = {gt["name"]: gt["passed"] for gt in json.loads((tmp_path / "v32" / "report.json").read_text())["gates"]}
    assert all(gates[f"agreement:{n}"] for n in names), gates
    i8 = tmp_path / "four-int8.onnx"
    assert main(["calibrate", str(fp32), "--images", str(calib), "--val-images", str(val), "-o", str(i8),
                 "--no-launder", "--report", str(tmp_path / "v8"), "--search"]) == 0
    fid = Scanner(i8).manifest.calibration["fidelity"]
    assert fid["passed"] and all(f"agreement:{n}" in {gt["name"] for gt in fid["gates"]} for n in names)
    assert main(["bench", str(fp32), str(i8), "--torch", "--mode", "model", "--batch-sizes", "2", "--backends", "cpu",
                 "--no-cold-start", "--min-iters", "1", "--min-seconds", "0", "--warmup", "0", "--settle", "0",
                 "--block", "0", "--json", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["reference"]["kind"] == "pytorch" and bench["errors"] == []
    assert bench["fidelity"][fp32.name]["agreement"] == 1.0, bench["fidelity"]
    rows = tmp_path / "rows.jsonl"
    main(["scan", str(val), "-m", str(i8), "-o", str(rows)])
    for line in rows.read_text().splitlines():
        r = json.loads(line)
        assert r["error"] is None and set(r["heads"]) == set(names), r
