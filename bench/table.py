"""The benchmark report as a text table: one line per result row, then fidelity, cold start and
the camera section, for the terminal."""
from __future__ import annotations

from .profile import profile_table
from .results import load_text


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _cpu(report: dict) -> str:
    return report["machine"].get("cpu_description") or report["machine"]["cpu"]


def _heading(report: dict) -> list[str]:
    m = report["machine"]
    lines = [f"machine: {_cpu(report)} (load average 1/5/15 min at start {load_text(m.get('load_average_at_start'))}, "
             f"at end {load_text(m.get('load_average_1_5_15'))}); reference: "
             f"{(report.get('reference') or {}).get('what')}"]
    for name, (h, w) in (report["settings"].get("own_size_inputs") or {}).items():
        lines.append(f"{name} takes each image at its own size: timed and compared on the "
                     f"{report['settings'].get('decoded_images')} benchmark images at their size, {w}x{h} "
                     "(no GFLOP/s: its FLOPs were counted at the traced size)")
    if report.get("gflops_per_image"):
        lines.append(f"model: {report['gflops_per_image']:.2f} GFLOP per image (counted at export; GFLOP/s = img/s x that, "
                     "int8 rows count integer operations the same way)")
    return lines


def _results(report: dict) -> list[str]:
    head = f"{'mode':<6}{'runtime':<12}{'backend':<17}{'artifact':<26}{'prec':<6}{'batch':>6}{'iters':>6}" \
           f"{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'img/s':>9}{'ratio':>7}{'GFLOP/s':>8}{'RSS MB':>8}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lat = r["latency_ms"]
        lines.append(f"{r['mode']:<6}{r['runtime']:<12}{r['backend'][:16]:<17}{r['artifact'][:25]:<26}{r['precision']:<6}"
                     f"{r['batch_size']:>6}{r['iterations']:>6}{_f(lat['p50']):>10}{_f(lat['p95']):>10}"
                     f"{_f(lat['p99']):>10}{_f(r['images_per_s']):>9}{_f(r['ratio_vs_reference'], '{:.2f}x'):>7}"
                     f"{_f(r.get('gflops_per_s'), '{:.0f}'):>8}{_f(r['peak_rss_mb'], '{:.0f}'):>8}")
    vs32 = [r for r in report["results"] if r.get("ratio_vs_fp32_artifact")]
    if vs32:
        lines.append("against the FP32 artifact on the same backend (same run): " + ", ".join(
            f"{r['mode']} {r['artifact']} on {r['backend']} b{r['batch_size']} {r['ratio_vs_fp32_artifact']:.2f}x"
            for r in vs32))
    return lines


def _fidelity_and_cold_start(report: dict) -> list[str]:
    lines = []
    if report["fidelity"]:
        lines.append("fidelity (against %s):" % (report.get("reference") or {}).get("kind"))
        for name, f in report["fidelity"].items():
            lines.append(f"  {name:<30} cosine mean {_f(f.get('cosine_mean'), '{:.7f}')} worst "
                         f"{_f(f.get('cosine_worst'), '{:.7f}')}  agreement {_f(f.get('agreement'), '{:.4f}')} "
                         f"on {f['n']} images")
            for head, h in (f.get("heads") or {}).items():
                what = (f"SRCC {_f(h.get('srcc'), '{:.5f}')}" if "srcc" in h else
                        f"agreement {_f(h.get('agreement'), '{:.4f}')} ({h.get('flips')} flip(s)), max |dlogit| "
                        f"{_f(h.get('max_abs_logit_diff'), '{:.3g}')}")
                lines.append(f"    head {head:<24} {what}")
    for c in report["cold_start"]:
        lines.append(f"cold start {c['artifact']} on {c['backend']}: {_f(c['seconds'], '{:.2f}')} s "
                     f"(to the first result line)")
    return lines


def _camera(cam: dict) -> list[str]:
    lines = [f"camera-sized: {cam['images']} JPEGs {cam['size'][0]}x{cam['size'][1]} q90 on {cam['backend']}, "
             f"batch {cam['batch_size']}; decode+preprocess ms/image (one thread) exact "
             f"{cam['decode_preprocess_ms_exact']:.1f} (decoded {cam['decoded_size_exact']}) vs draft "
             f"{cam['decode_preprocess_ms_draft']:.1f} (decoded {cam['decoded_size_draft']})"]
    plain = cam.get("plain") or {}
    if plain:
        lines.append("  plain pipeline (PIL full decode + reference transform + PyTorch eager): "
                     + ", ".join(f"batch {p['batch_size']} {p['images_per_s']:.2f} img/s" for p in plain.values()))
    for a in cam["artifacts"]:
        ratios = "".join(f", vs plain b{k}: exact {a[f'ratio_exact_vs_plain_b{k}']:.2f}x draft "
                         f"{a[f'ratio_draft_vs_plain_b{k}']:.2f}x" for k in plain)
        f = a["draft_fidelity"]
        lines.append(f"  {a['artifact']} ({a['precision']}): inference {a['inference_ms_per_image']:.1f} ms/image; "
                     f"e2e img/s exact {a['e2e_images_per_s_exact']:.2f}, draft {a['e2e_images_per_s_draft']:.2f}"
                     f"{ratios}")
        lines.append(f"    draft vs exact: agreement {_f(f.get('agreement'), '{:.4f}')} cosine mean "
                     f"{_f(f.get('cosine_mean'), '{:.6f}')} worst {_f(f.get('cosine_worst'), '{:.6f}')} on {f['n']} "
                     f"images: gates {'passed' if f['passed'] else 'FAILED'}; inference overlapped with decoding "
                     f"{_f(a['overlap_trace']['inference_overlapped_fraction'], '{:.0%}')}")
    lines += [f"  error: {e}" for e in cam.get("errors", [])]
    return lines


def format_table(report: dict) -> str:
    lines = _heading(report) + _results(report) + _fidelity_and_cold_start(report)
    if report.get("camera"):
        lines += _camera(report["camera"])
    lines += profile_table(report)
    lines += [f"error: {e}" for e in report["errors"]]
    return "\n".join(lines)
