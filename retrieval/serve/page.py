"""The two server-rendered pages: the search page (its behaviour is ``static/app.js``) and the results
folder (E1-E7 table, figures, the queries with the lowest AP). Every value from a file is escaped."""
from __future__ import annotations

import json
import math
from html import escape
from typing import Dict, List, Tuple
from urllib.parse import quote

from retrieval.serve.catalog import Catalog
from retrieval.serve.results import ResultsFolder
from retrieval.serve.uploads import UploadLimits

__all__ = ["render_page", "render_results", "worst_queries"]

_HEAD = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<link rel="stylesheet" href="/static/style.css"></head><body>
<header><h1><a href="/">hybrid-retrieval</a></h1><nav>{nav}</nav></header>"""


def _nav(has_results: bool) -> str:
    links = ['<a href="/">search</a>', '<a href="/docs">API docs</a>']
    if has_results:
        links.insert(1, '<a href="/results">results</a>')
    return " ".join(links)


def _norm_text(fusion) -> str:
    """How the page names the local score's normalisation of ``fusion``."""
    if fusion.method == "linear" and fusion.norm == "saturate":
        return f"min(local, {fusion.T:g}) / {fusion.T:g}"
    if fusion.method == "linear" and fusion.norm != "none":
        return f"local ({fusion.norm})"
    return "local"


def render_page(catalog: Catalog, has_results: bool, default_k: int, default_v: float,
                limits: UploadLimits, allow_add: bool = False) -> str:
    info = catalog.describe()
    cfg = info["extractor"] or {}
    summary = (f"{info['count']:,} images, {info['dim']}-d, {escape(str(info['backend']))}; extractor "
               f"{escape(str(cfg.get('name') or cfg.get('extractor') or 'not recorded'))}")
    if info["local"]:
        summary += f"; local features {escape(str(info['local'].get('name') or info['local'].get('type')))}"
    if info["ground_truth"]:
        summary += "; ground truth"
    if info["generation"] is not None:
        summary += f"; collection generation <span id='generation'>{info['generation']}</span>"
    columns = info["metadata"]
    settings = {"k": default_k, "v": default_v, "maxBytes": limits.max_bytes, "local": catalog.has_local,
                "queries": len(catalog.query_ids), "allowAdd": bool(allow_add)}
    filter_box = "" if columns is None else f"""
  <label>filter <input type="text" id="where" size="34" placeholder="label=cat; date>=2024-01-01"
    title="conditions COLUMN OP VALUE separated by ';' (OP: = != < <= > >= ~ for a prefix); columns:
    {escape(', '.join(columns))}"></label>"""
    add_form = "" if not allow_add else """
  <form id="add-form"><label>Add images to the collection <input type="file" id="add" name="files"
    accept="image/*" multiple></label></form>"""
    return _HEAD.format(title="hybrid-retrieval", nav=_nav(has_results)) + f"""
<main>
<section id="about" class="muted">{summary}</section>
<section id="controls">
  <form id="upload-form"><label>Search with an image <input type="file" id="upload" name="file"
    accept="image/*"></label></form>{add_form}{filter_box}
  <label>k <input type="number" id="k" min="1" max="200" value="{default_k}"></label>
  <label id="v-box" {'hidden' if not catalog.has_local else ''}>v <input type="range" id="v-slider" min="0"
    max="1" step="0.05" value="{default_v}"> <output id="v-value">{default_v}</output>
    <span class="muted">fused = v &middot; global + (1 &minus; v) &middot; {escape(_norm_text(catalog.fusion))}
    &middot; serving <b id="fusion-label">{escape(catalog.fusion.label)}</b>
    (<span title="{escape(catalog.fusion_source)}">{escape(catalog.fusion_source.split(" (")[0])}</span>)</span></label>
</section>
<p id="status" role="status"></p>
<section id="query-panel" hidden>
  <figure id="query-figure"><img id="query-image" alt="query"><figcaption id="query-caption"></figcaption></figure>
  <div id="ap"></div>
</section>
<section id="matches-panel" hidden><h2 id="matches-title"></h2><canvas id="matches-canvas"></canvas>
  <p class="muted">green: inliers of the spatial model (or ratio-test matches); red: other tentative matches</p>
</section>
<section id="results"></section>
<section id="browse"><h2>Database <span class="muted">(click an image to search with it)</span></h2>
  <div class="pager"><select id="which"><option value="database">database</option>
  {'<option value="queries">queries</option>' if catalog.query_ids else ''}</select>
  <button id="prev">&larr;</button> <span id="page-info"></span> <button id="next">&rarr;</button></div>
  <div id="browse-grid" class="grid"></div></section>
</main>
<script id="settings" type="application/json">{escape(json.dumps(settings), quote=False)}</script>
<script src="/static/app.js"></script></body></html>"""


def worst_queries(results: ResultsFolder, catalog: Catalog, n: int = 24) -> Tuple[str, List[Tuple[str, float]]]:
    """(where the APs come from, the ``n`` queries with the lowest AP, lowest first): the results'
    own per-query APs (the last experiment listed), else the served index's global ranking of the
    dataset's queries (Oxford AP over the top 1000, junk ignored)."""
    per_query = results.per_query()
    if per_query:
        name = list(per_query)[-1]
        scores = per_query[name]
        source = f"per-query AP of {name} in results.json"
    else:
        scores = _served_aps(catalog)
        source = "AP of the served index's global ranking (Oxford rule over the top 1000, junk ignored)"
    ranked = sorted(((q, a) for q, a in scores.items() if not math.isnan(a)), key=lambda qa: (qa[1], qa[0]))
    return source, ranked[:n]


def _served_aps(catalog: Catalog) -> Dict[str, float]:
    from retrieval.evaluation.metrics import oxford_ap

    import numpy as np

    out: Dict[str, float] = {}
    queries = [q for q in catalog.query_ids if catalog.truth(q) is not None]
    if not queries:
        return out
    k = min(1000, len(catalog.index))
    for lo in range(0, len(queries), 256):
        part = queries[lo:lo + 256]
        ranking = catalog.index.search(np.stack([catalog.vector(q) for q in part]), k=k, query_ids=part)
        for q, ranked in ranking.to_predictions().items():
            t = catalog.truth(q)
            if t.positives:
                out[q] = oxford_ap([str(i) for i in ranked], t.positives, t.junk)
    return out


def _html_table(header: List[str], rows: List[List[str]], css_class: str = "results-table") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return (f"<div class='scroll'><table class='{css_class}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _markdown_tables(results: ResultsFolder) -> str:
    """results.md's tables as HTML, under their headings; the long table of every row ("All rows")
    folded away, as results.md keeps it after the pivoted ones."""
    parts, folded = [], False
    for kind, value in results.markdown_blocks():
        if kind == "heading":
            level, text = value
            if text.lower() == "all rows":
                folded = True
                parts.append("<details id='all-rows'><summary>All rows (one per experiment, dataset and split)"
                             "</summary>")
                continue
            tag = "h3" if level <= 3 else "h4"
            parts.append(f"<{tag}>{escape(text)}</{tag}>")
        elif kind == "table":
            parts.append(_html_table(*value))
        else:
            parts.append(f"<p>{escape(value)}</p>")
    if folded:
        parts.append("</details>")
    return "".join(parts)


def render_results(results: ResultsFolder, catalog: Catalog) -> str:
    parts = [_HEAD.format(title="results", nav=_nav(True)), "<main>",
             f"<h2>Results <span class='muted'>{escape(str(results.path))}</span></h2>"]
    if results.markdown:
        parts.append(f"<div id='results-tables'>{_markdown_tables(results)}</div>")
    else:
        columns, cells = results.table()
        if columns:
            parts.append(_html_table(columns, cells, "results-table flat"))
    if results.figures:
        parts.append("<h2>Figures</h2><div class='figures'>")
        parts += [f"<figure><a href='/results/figures/{quote(n)}'><img src='/results/figures/{quote(n)}' "
                  f"alt='{escape(n)}'></a><figcaption>{escape(n)}</figcaption></figure>" for n in results.figures]
        parts.append("</div>")
    source, worst = worst_queries(results, catalog)
    parts.append(f"<h2>Failures <span class='muted'>lowest AP first; {escape(source)}</span></h2>")
    if worst:
        rows = "".join(
            f"<tr><td>{i + 1}</td><td><a href='/?id={quote(q, safe='')}'>"
            + (f"<img class='thumb' src='/api/image/{quote(q, safe='')}?size=96' alt=''>" if catalog.has_image(q) else "")
            + f"{escape(q)}</a></td><td>{a:.3f}</td></tr>" for i, (q, a) in enumerate(worst))
        parts.append(f"<table id='failures'><thead><tr><th>#</th><th>query</th><th>AP</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    else:
        parts.append("<p class='muted'>No per-query APs: the results hold none and the served data has no "
                     "queries with ground truth.</p>")
    parts.append("</main></body></html>")
    return "".join(parts)
