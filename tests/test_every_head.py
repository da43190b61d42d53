"""Every head's answer reaches the user, on a three-decision-head model (conftest.multi_head_model: univfd
decides, cozzolino calls a photo generated that the row calls real, captions attributes generators):
the rows' `generator` rule, local and through a real `clipscan serve` found without --server-model (its
OIP outputs, metadata, /v1/scan and per-head metrics), the report's per-head counts, histograms and
columns (JSONL and CSV rows), and the upload page in a real chromium."""
from __future__ import annotations

import csv
import json

import pytest

from clipscan.cli import main
from clipscan.report import build_report, read_rows
from clipscan.runtime import RemoteScanner, Scanner, ServerError
from clipscan.runtime.contract import output_specs
from clipscan.runtime.postprocess import row_generator

from .conftest import SAMPLES
from .serve_servers import cli_server, metric, request

HEADS = ("univfd", "cozzolino", "captions", "quality")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def local_rows(multi_head_model, tmp_path_factory):
    """`clipscan scan` of the samples and a broken file, JSONL and CSV."""
    d = tmp_path_factory.mktemp("every_head")
    (d / "broken.jpg").write_bytes((SAMPLES / "photo_chelsea.jpg").read_bytes()[:500])
    paths = [str(p) for p in sorted(SAMPLES.iterdir())] + [str(d / "broken.jpg")]
    for fmt in ("jsonl", "csv"):
        assert main(["scan", "-m", str(multi_head_model), *paths, "-o", str(d / f"rows.{fmt}")]) == 1
    return d, _rows(d / "rows.jsonl")


def test_the_row_generator_rule_and_the_outputs_of_every_head(multi_head_model, local_rows):
    _, rows = local_rows
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    for r in rows[:-1]:
        assert set(r["heads"]) == set(HEADS) and r["verdict"] == r["heads"]["univfd"]["verdict"], r
        captions = r["heads"]["captions"]
        assert r["generator"] == (captions["generator"] if r["verdict"] == "generated" else None), r
    # the primary (a detection head) names no generator: the row takes the attribution head's
    named = by_name["render_001.png"]
    assert named["verdict"] == "generated" and named["generator"] == named["heads"]["captions"]["generator"]
    assert named["generator"] in Scanner(multi_head_model).manifest.head("attribution").labels[1:]
    # the row says generated but captions (threshold 0.85) says real: no head names a generator
    assert by_name["render_002.png"]["verdict"] == "generated" and by_name["render_002.png"]["generator"] is None
    # cozzolino says generated for the photo the row calls real (and names no generator: it cannot)
    photo = by_name["photo_chelsea.jpg"]
    assert photo["verdict"] == "real" and photo["heads"]["cozzolino"]["verdict"] == "generated"
    assert photo["generator"] is None and rows[-1]["error_kind"] and rows[-1]["heads"] is None
    with Scanner(multi_head_model) as scanner:
        manifest = scanner.manifest
        # the rule is one function: a row that says real names no generator whatever the heads say
        answers = {"captions": {"generator": "sdxl"}, "univfd": {}}
        assert row_generator(manifest, answers, False) is None and row_generator(manifest, answers, True) == "sdxl"
    names = [s.name for s in output_specs(manifest)]
    assert "generator" in names and {f"{h}.verdict" for h in HEADS[:3]} | {"captions.generator",
                                                                           "quality.score"} <= set(names)


def test_the_report_shows_every_head_from_jsonl_and_csv(local_rows):
    d, rows = local_rows
    ok = [r for r in rows if not r["error"]]
    for fmt in ("jsonl", "csv"):
        data = read_rows(d / f"rows.{fmt}")
        assert [list(r.heads) for r in data.rows[:-1]] == [list(HEADS)] * len(ok) and data.rows[-1].heads == {}
        result = build_report(d / f"rows.{fmt}", d / f"report-{fmt}.html")
        heads = {h.name: h for h in result.summary.heads}
        assert list(heads) == list(HEADS)
        for name in HEADS[:3]:
            want = {}
            for r in ok:
                want[r["heads"][name]["verdict"]] = want.get(r["heads"][name]["verdict"], 0) + 1
            assert heads[name].by_verdict == want and heads[name].histogram.total == len(ok)
        assert heads["captions"].by_generator == {ok[2]["generator"]: 1}
        assert heads["quality"].histogram.name == "quality.score" and heads["quality"].histogram.total == len(ok)
        assert result.summary.by_generator == {ok[2]["generator"]: 1}
        table = {row[0]: row for row in result.summary.table}
        chelsea = table[ok[0]["path"]]
        assert chelsea[2] == "real" and chelsea[6][1] == "real" and chelsea[7][1] == "generated"
        assert chelsea[9] == pytest.approx(ok[0]["heads"]["quality"]["score"])
        page = (d / f"report-{fmt}.html").read_text()
        for name in HEADS:
            assert f'id="by-verdict-{name}"' in page or name == "quality"
            assert f'<th class="head" data-head="{name}">{name}</th>' in page
        assert 'id="hist-cozzolino.p_generated"' in page and 'id="hist-quality.score"' in page
        assert 'id="by-generator-captions"' in page


def test_scan_server_without_server_model_on_clipscan_serve(multi_head_model, local_rows, tmp_path):
    _, local = local_rows
    photo, render = (SAMPLES / "photo_chelsea.jpg").read_bytes(), (SAMPLES / "render_001.png").read_bytes()
    with cli_server(str(multi_head_model), "--max-batch", "4") as (url, _):
        status, _, body = request(url + "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
        assert status == 200 and json.loads(body) == [{"name": name, "version": "1", "state": "READY"}
                                                      for name in ("three-heads", "three-heads_pixels")]
        assert json.loads(request(url + "/v2/repository/index", b'{"ready": true}')[2])[0]["state"] == "READY"
        status, _, body = request(url + "/v2/repository/index", b"[1", {"Content-Type": "application/json"})
        assert status == 400 and "JSON object" in json.loads(body)["error"]
        meta = json.loads(request(url + "/v2/models/three-heads")[2])
        outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
        assert outputs["generator"] == "BYTES" and outputs["captions.generator"] == "BYTES"
        assert outputs["cozzolino.verdict"] == "BYTES" and outputs["cozzolino.p_generated"] == "FP32"
        paths = [r["path"] for r in local]
        assert main(["scan", "--server", url, *paths, "-o", str(tmp_path / "remote.jsonl")]) == 1
        remote = _rows(tmp_path / "remote.jsonl")
        _same_rows(remote, local)
        with RemoteScanner(url) as client:
            assert client.model == "three-heads" and "generator" in client.columns_for("csv")
        rows = json.loads(request(url + "/v1/scan?name=p.jpg", photo, {"Content-Type": "image/jpeg"})[2])
        rows += json.loads(request(url + "/v1/scan?name=r.png", render, {"Content-Type": "image/png"})[2])
        assert rows[0]["heads"]["cozzolino"]["verdict"] == "generated" and rows[0]["verdict"] == "real"
        assert rows[1]["generator"] == rows[1]["heads"]["captions"]["generator"] is not None
        text = request(url + "/metrics")[2].decode()
    counts = {}
    for r in remote + rows:
        for name, a in (r["heads"] or {}).items():
            if a.get("verdict"):
                counts[name, a["verdict"]] = counts.get((name, a["verdict"]), 0) + 1
    for (name, verdict), n in counts.items():
        assert metric(text, "clipscan_verdicts_total", f'head="{name}",verdict="{verdict}"') == n, (name, verdict)
    generated = sum(1 for r in remote + rows if r["heads"] and r["heads"]["captions"]["generator"])
    assert metric(text, "clipscan_generators_total",
                  f'generator="{rows[1]["generator"]}",head="captions"') == generated > 0


def test_a_client_that_cannot_choose_says_why_and_reads_a_models_listing(capsys):
    from .test_remote import FakeServer

    class Listing(FakeServer):  # no repository index; a KServe-style GET /v2/models listing
        def route(self, h, method, body):
            if h.path == "/v2/models/twin":   # a second clipscan model
                h.path = "/v2/models/demo"
            if h.path == "/v2/models" and method == "GET" and self.listed is not None:
                names = json.dumps({"models": self.listed}).encode()
                return h.reply(200, names, {"Content-Type": "application/json"})
            return super().route(h, method, body)

    server = Listing()
    try:
        server.listed = ["demo"]
        with RemoteScanner(server.url) as client:
            assert client.model == "demo"
        server.listed = ["other", "demo"]   # other is not a clipscan model (no metadata): demo is still the one
        with RemoteScanner(server.url) as client:
            assert client.model == "demo"
        server.listed = ["demo", "twin"]
        with pytest.raises(ServerError, match=r"^which model of http://[^?]+\? it serves 2 clipscan models, "
                                              r"\['demo', 'twin'\]; pass --server-model NAME$"):
            RemoteScanner(server.url)
        server.listed = []
        with pytest.raises(ServerError, match=r"it lists no model \(GET /v2/models lists none\)"):
            RemoteScanner(server.url)
        server.listed = None   # neither listing: both answers are named
        with pytest.raises(ServerError, match=r"it lists no model \(POST /v2/repository/index answered HTTP 404 and "
                                              r"GET /v2/models HTTP 404\); pass --server-model NAME"):
            RemoteScanner(server.url)
    finally:
        server.close()


@pytest.mark.slow
def test_the_upload_page_shows_every_head(multi_head_model, local_rows):
    from clipscan.serve import Limits, ServiceState

    from .browser import browser_page
    from .serve_servers import thread_server

    d, local = local_rows
    want = {r["path"].rsplit("/", 1)[-1]: r for r in local if not r["error"]}
    build_report(d / "rows.jsonl", d / "report-jsonl.html")
    with Scanner(multi_head_model) as scanner, thread_server(ServiceState(scanner, Limits())) as url, \
            browser_page() as page:
        page.goto(url + "/")
        page.set_input_files("#files", [str(SAMPLES / n) for n in want])
        page.wait_for_function(f"document.querySelectorAll('.card[data-verdict]').length == {len(want)}",
                               timeout=30000)
        for name, row in want.items():
            card = page.locator(f'.card[data-name="{name}"]')
            assert card.get_attribute("data-verdict") == row["verdict"]
            for head in HEADS:
                line = card.locator(f'.head[data-head="{head}"]')
                a = row["heads"][head]
                text = line.inner_text()
                if "score" in a:
                    assert f"score {a['score']:.2f}" in text
                    continue
                assert line.get_attribute("data-verdict") == a["verdict"]
                assert f"p {a['p_generated']:.3f}" in text
                assert (f"generator {a.get('generator')}" in text) == bool(a.get("generator")), text
        # the report's table: one column per head, filterable by a head's generator
        page.goto((d / "report-jsonl.html").as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30000)
        heads = page.evaluate("[...document.querySelectorAll('#rows-table th.head')].map(th => th.textContent)")
        assert heads == list(HEADS)
        named = want["render_001.png"]
        page.fill("#rows-filter", named["generator"])
        cells = page.evaluate("[...document.querySelectorAll('#rows-table tbody tr')].map(tr => "
                              "[...tr.cells].map(c => c.textContent))")
        assert len(cells) == 1 and cells[0][3] == named["generator"]
        captions = named["heads"]["captions"]
        assert cells[0][8] == f"generated {captions['p_generated']:.3f} {named['generator']}", cells
        assert cells[0][9] == f"{named['heads']['quality']['score']:.4f}"


def test_csv_head_columns_round_trip(local_rows):
    """The CSV's `<head>_<field>` columns are what the report splits back into heads (head names with `_`)."""
    d, _ = local_rows
    with open(d / "rows.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "captions_generator" in header and "cozzolino_p_generated" in header and "generator" in header
    from clipscan.report.rows import to_row

    row = to_row({"path": "x", "gaintseva_heads_p_generated": "0.5", "gaintseva_heads_verdict": "real",
                  "gaintseva_heads_threshold": "", "p_generated": "0.5", "error_kind": ""})
    assert row.heads == {"gaintseva_heads": {"p_generated": 0.5, "verdict": "real"}}


def _same_rows(remote, local):
    assert [r["path"] for r in remote] == [r["path"] for r in local]
    for a, b in zip(remote, local):
        assert (a["verdict"], a["generator"], a["error_kind"]) == (b["verdict"], b["generator"], b["error_kind"]), a
        for name, answer in (b["heads"] or {}).items():
            for f, v in answer.items():
                assert a["heads"][name][f] == (pytest.approx(v, abs=1e-5) if isinstance(v, float) else v), a


@pytest.mark.slow
def test_a_real_tritonserver_gives_every_head_and_is_found_without_server_model(multi_head_model, local_rows,
                                                                                 tmp_path):
    from clipscan.triton.launch import start_tritonserver

    from .triton_helpers import need_tritonserver

    dist = need_tritonserver()
    _, local = local_rows
    assert main(["triton", "--repo", str(tmp_path / "repo"), str(multi_head_model), "--max-batch", "4"]) == 0
    server = start_tritonserver(tmp_path / "repo", tmp_path / "work", dist=dist)
    try:
        server.wait_ready(timeout=90)
        meta = json.loads(request(server.url + "/v2/models/three-heads")[2])
        assert {"generator", "captions.generator", "cozzolino.verdict"} <= {o["name"] for o in meta["outputs"]}
        assert main(["scan", "--server", server.url, *[r["path"] for r in local],
                     "-o", str(tmp_path / "triton.jsonl")]) == 1
    finally:
        server.stop()
    _same_rows(_rows(tmp_path / "triton.jsonl"), local)
