"""The upload page at `/`: drag and drop (or choose) images; each shows its thumbnail, verdict, p_generated
(with a bar), generator and quality, then every head's own answer (verdict, p_generated and generator, or
score), or its error. One self-contained HTML file: no build step, no
external assets."""
from __future__ import annotations

import html

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipscan: __MODEL__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;margin:2rem;background:#f6f7f9;color:#1d232b}
h1{font-size:1.4rem;margin:0 0 .3rem} .sub{color:#5b6674;margin-bottom:1rem}
#drop{border:3px dashed #8a96a6;border-radius:12px;padding:2rem;text-align:center;background:#fff;cursor:pointer}
#drop.over{border-color:#2f6fdf;background:#eef4ff}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:1rem;margin-top:1.2rem}
.card{background:#fff;border-radius:10px;padding:.8rem;box-shadow:0 1px 4px rgba(0,0,0,.12)}
.card img,.noimg{width:100%;height:150px;object-fit:cover;border-radius:6px;background:#dde2e8}
.noimg{display:flex;align-items:center;justify-content:center;color:#5b6674;font-size:.9rem}
.name{font-size:.85rem;color:#5b6674;word-break:break-all;margin:.4rem 0}
.verdict{font-weight:700;font-size:1.1rem}
.verdict.generated{color:#c0392b} .verdict.real{color:#1e8449}
.bar{height:12px;border-radius:6px;background:#e3e7ec;overflow:hidden;margin:.3rem 0}
.bar>div{height:100%;background:linear-gradient(90deg,#1e8449,#f1c40f,#c0392b)}
.error{color:#b03a2e;font-weight:600} .kv{font-size:.9rem}
.heads{margin-top:.4rem;border-top:1px solid #e3e7ec;padding-top:.3rem} .head{font-size:.85rem;color:#3b4450}
.head b{font-weight:600} .head .generated{color:#c0392b} .head .real{color:#1e8449}
</style></head><body>
<h1>clipscan &mdash; is this image AI-generated?</h1>
<div class="sub">model <b>__MODEL__</b> on backend <b>__BACKEND__</b>; images are scanned here and not kept.</div>
__TOKEN__
<div id="drop" tabindex="0">Drop images here, or click to choose files
<input id="files" type="file" multiple accept="image/*" hidden></div>
<div id="results"></div>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('files');
const results = document.getElementById('results');
drop.onclick = () => input.click();
input.onchange = () => { scanAll(input.files); input.value = ''; };
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); scanAll(e.dataTransfer.files); };
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function scanAll(files) { for (const f of files) scanOne(f); }
async function scanOne(file) {
  const card = el('div', 'card'); card.dataset.name = file.name;
  const img = el('img'); img.alt = file.name; img.src = URL.createObjectURL(file);
  // a file the browser cannot show (not an image, truncated): a plain box instead of a broken-image icon
  img.onerror = () => { URL.revokeObjectURL(img.src); img.replaceWith(el('div', 'noimg', 'no preview')); };
  card.append(img, el('div', 'name', file.name));
  const status = el('div', 'kv', 'scanning...'); card.append(status); results.append(card);
  const headers = {'Content-Type': file.type || 'application/octet-stream'};
  const tok = document.getElementById('token'); if (tok && tok.value) headers['Authorization'] = 'Bearer ' + tok.value;
  let row = null, error = null;
  try {
    const resp = await fetch('/v1/scan?name=' + encodeURIComponent(file.name), {method: 'POST', headers, body: file});
    const data = await resp.json();
    if (resp.ok) row = data[0]; else error = (data.rows && data.rows[0] && data.rows[0].error) || data.error;
  } catch (e) { error = 'request failed: ' + e; }
  status.remove();
  if (row && !row.error) {
    card.dataset.verdict = row.verdict;
    card.append(el('div', 'verdict ' + row.verdict, row.verdict));
    const bar = el('div', 'bar'), fill = el('div'); fill.style.width = (100 * row.p_generated).toFixed(1) + '%';
    bar.append(fill); card.append(bar);
    card.append(el('div', 'kv p', 'p_generated ' + row.p_generated.toFixed(3)));
    if (row.generator) card.append(el('div', 'kv', 'generator ' + row.generator));
    if (row.quality !== null && row.quality !== undefined) card.append(el('div', 'kv', 'quality ' + row.quality.toFixed(2)));
    const heads = el('div', 'heads');
    for (const [name, a] of Object.entries(row.heads || {})) {
      const line = el('div', 'head'); line.dataset.head = name; line.append(el('b', '', name + ': '));
      if (a.verdict) { line.dataset.verdict = a.verdict; line.append(el('span', a.verdict, a.verdict)); }
      if (a.p_generated !== null && a.p_generated !== undefined) line.append(' p ' + a.p_generated.toFixed(3));
      if (a.generator) line.append(' generator ' + a.generator);
      if (a.score !== null && a.score !== undefined) line.append('score ' + a.score.toFixed(2));
      heads.append(line);
    }
    if (heads.childElementCount) card.append(heads);
  } else {
    card.dataset.verdict = 'error';
    card.append(el('div', 'error', 'error: ' + (row ? row.error : error)));
  }
}
</script></body></html>
"""

TOKEN_FIELD = ('<p><label>Bearer token <input id="token" type="password" autocomplete="off"></label></p>')


def page_html(model: str, backend: str, needs_token: bool) -> str:
    """The page; with a token set it is still public, so it names neither the model nor the backend."""
    if needs_token:
        model, backend = "(not shown without the token)", "(not shown)"
    return (PAGE.replace("__MODEL__", html.escape(model)).replace("__BACKEND__", html.escape(backend))
            .replace("__TOKEN__", TOKEN_FIELD if needs_token else ""))
