"""The scan report's own style and script, inlined into every report (no external assets: the file opens
offline); the style shared with the fidelity report is html_kit.BASE_CSS, which comes first."""

CSS = """
td.path { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; max-width: 520px; }
td.msg { font-size: 12px; max-width: 560px; word-break: break-word; }
.count-bar { display: inline-block; height: 10px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.v-failed .count-bar { background: var(--fail); }
svg.hist { background: #fff; }
svg.hist rect.bar { fill: var(--accent); }
svg.hist rect.bar:hover { fill: #f39c12; }
svg.hist text { font-size: 11px; fill: var(--muted); }
.controls { display: flex; gap: 10px; align-items: center; margin: 0 0 12px; flex-wrap: wrap; }
.controls input[type=search] { width: 280px; padding: 5px 8px; border: 1px solid var(--line); border-radius: 5px; }
.controls select, .controls button { padding: 4px 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(178px, 1fr)); gap: 12px; }
figure.card { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fcfcfd; }
figure.card img.thumb { display: block; margin: 0 auto 6px; max-width: 160px; max-height: 160px; border-radius: 3px; }
figure.card .nothumb { height: 120px; display: flex; align-items: center; justify-content: center; text-align: center;
                       color: var(--muted); font-size: 12px; background: #eef0f3; border-radius: 3px; margin-bottom: 6px;
                       padding: 6px; }
figure.card figcaption { font-size: 12px; }
figure.card .p { font-size: 16px; font-weight: 700; color: var(--gen); }
figure.card .name { font-family: ui-monospace, monospace; word-break: break-all; color: var(--muted); }
.tag { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11px; background: #eef0f3; }
.tag.generated { background: #fde2df; color: var(--gen); }
.tag.failed { background: #efe3f5; color: var(--fail); }
.pager { margin-top: 8px; display: flex; gap: 10px; align-items: center; }
"""

JS = r"""
(function () {
  "use strict";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const num = (s) => { const v = parseFloat(s); return isNaN(v) ? -Infinity : v; };

  // Static tables (counts, failures): click a header to sort by its column.
  $$("table.sortable").forEach((table) => {
    $$("th", table).forEach((th, col) => {
      th.classList.add("sort");
      th.addEventListener("click", () => {
        const asc = th.getAttribute("aria-sort") !== "ascending";
        $$("th", table).forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        const isNum = th.classList.contains("num");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = a.cells[col].textContent, y = b.cells[col].textContent;
          const c = isNum ? num(x) - num(y) : x.localeCompare(y);
          return asc ? c : -c;
        });
        rows.forEach((r) => body.appendChild(r));
      });
    });
  });

  // Failed files: filter by text and by error kind.
  const failFilter = $("#failures-filter"), failKind = $("#failures-kind");
  function filterFailures() {
    const q = failFilter.value.toLowerCase(), kind = failKind.value;
    let shown = 0;
    $$("#failures-table tbody tr").forEach((tr) => {
      const ok = (!kind || tr.dataset.kind === kind) && (!q || tr.textContent.toLowerCase().includes(q));
      tr.hidden = !ok; shown += ok ? 1 : 0;
    });
    $("#failures-shown").textContent = shown;
  }
  if (failFilter) { failFilter.addEventListener("input", filterFailures); failKind.addEventListener("change", filterFailures); }

  // The most likely generated images: filter and sort the cards.
  const topFilter = $("#top-filter"), topSort = $("#top-sort"), grid = $("#top-grid");
  function arrangeTop() {
    const q = topFilter.value.toLowerCase(), [key, dir] = topSort.value.split(":");
    const cards = $$("figure.card", grid);
    cards.sort((a, b) => {
      const x = a.dataset[key], y = b.dataset[key];
      const c = key === "path" ? x.localeCompare(y) : num(x) - num(y);
      return dir === "asc" ? c : -c;
    });
    let shown = 0;
    cards.forEach((card) => {
      const ok = !q || card.dataset.path.toLowerCase().includes(q) || (card.dataset.generator || "").toLowerCase().includes(q);
      card.hidden = !ok; shown += ok ? 1 : 0; grid.appendChild(card);
    });
    $("#top-shown").textContent = shown;
  }
  if (grid) { topFilter.addEventListener("input", arrangeTop); topSort.addEventListener("change", arrangeTop); }

  // Every row: rendered page by page from the embedded data (a 50,000-row DOM would be slow to open).
  const data = JSON.parse($("#rows-data").textContent);
  const PAGE = 100;
  const state = { q: "", verdict: "", key: 1, asc: false, page: 0, view: data };
  // columns 0-5 are the row's own; each later one is a head's answer: [p_generated, verdict, generator] or a score
  const HEAD0 = 6;
  const key = (v) => Array.isArray(v) ? v[0] : v;
  const width = $$("#rows-table th").length;
  const numeric = Array.from({length: width}, (_, i) =>
    i === 1 || i === 4 || (i >= HEAD0 && data.some((r) => typeof key(r[i]) === "number")));
  const isNum = (i) => numeric[i];
  const fmt = (v, i) => {
    if (v === null || v === undefined) return "";
    if (Array.isArray(v)) return [v[1], v[0] === null ? null : Number(v[0]).toFixed(3), v[2]].filter((x) => x !== null && x !== undefined).join(" ");
    return (i === 1 || i === 4 || (i >= HEAD0 && typeof v === "number")) ? Number(v).toFixed(4) : String(v);
  };
  function refilter() {
    const q = state.q.toLowerCase(), verdict = state.verdict;
    const view = data.filter((r) => (!verdict || r[2] === verdict) &&
      (!q || String(r[0]).toLowerCase().includes(q) || String(r[3] || "").toLowerCase().includes(q) ||
       String(r[5] || "").toLowerCase().includes(q) ||
       r.slice(HEAD0).some((v, j) => fmt(v, HEAD0 + j).toLowerCase().includes(q))));
    const k = state.key, s = state.asc ? 1 : -1;
    const byNumber = isNum(k);
    view.sort((a, b) => {
      const x = key(a[k]), y = key(b[k]);
      if (x === null || x === undefined || y === null || y === undefined) {
        return (x ?? null) === (y ?? null) ? 0 : (x === null || x === undefined ? 1 : -1);  // empty cells last
      }
      return s * (byNumber ? x - y : String(x).localeCompare(String(y)));
    });
    state.view = view; state.page = 0; render();
  }
  function render() {
    const body = $("#rows-table tbody");
    const start = state.page * PAGE, rows = state.view.slice(start, start + PAGE);
    const frag = document.createDocumentFragment();
    rows.forEach((r) => {
      const tr = document.createElement("tr");
      r.forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = fmt(v, i);
        td.className = i === 0 ? "path" : isNum(i) ? "num" : "";
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.replaceChildren(frag);
    const n = state.view.length;
    $("#rows-range").textContent = n ? `${start + 1}\u2013${Math.min(start + PAGE, n)} of ${n}` : "no rows match";
    $("#rows-prev").disabled = state.page === 0;
    $("#rows-next").disabled = start + PAGE >= n;
    $$("#rows-table th").forEach((th, i) => {
      if (i === state.key) th.setAttribute("aria-sort", state.asc ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
  }
  $$("#rows-table th").forEach((th, i) => {
    th.classList.add("sort");
    th.addEventListener("click", () => {
      state.asc = state.key === i ? !state.asc : !isNum(i);
      state.key = i; refilter();
    });
  });
  $("#rows-filter").addEventListener("input", (e) => { state.q = e.target.value; refilter(); });
  $("#rows-verdict").addEventListener("change", (e) => { state.verdict = e.target.value; refilter(); });
  $("#rows-prev").addEventListener("click", () => { state.page -= 1; render(); });
  $("#rows-next").addEventListener("click", () => { state.page += 1; render(); });
  refilter();
  document.body.dataset.ready = "1";
})();
"""
