"""The HTML page of `strop data check --html`: findings, a length histogram and a 2-D embedding map.

Self-contained: inline SVG, no scripts or external assets.
"""
from __future__ import annotations

import html
import json

from ..report.html import CSS


def _histogram_svg(hist: dict, max_length: int, width: int = 640, height: int = 200) -> str:
    counts = hist["counts"]
    top = max(counts) or 1
    bar = width / len(counts)
    bars = []
    for i, c in enumerate(counts):
        lo = hist["start"] + i * hist["width"]
        h = (height - 20) * c / top
        colour = "#c0392b" if lo + hist["width"] > max_length else "#2e86c1"
        bars.append(f'<rect x="{i * bar:.1f}" y="{height - 20 - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{lo}-{lo + hist["width"] - 1} tokens: {c} rows</title></rect>')
    end = hist["start"] + hist["width"] * len(counts)
    axis = (f'<text x="0" y="{height - 4}" font-size="11">{hist["start"]}</text>'
            f'<text x="{width - 40}" y="{height - 4}" font-size="11">{end} tokens</text>')
    return f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}{axis}</svg>'


def _map_svg(emb: dict, where: list[str], flagged: set[int], size: int = 420) -> str:
    pts = emb.get("map", {}).get("xy") or []
    if not pts:
        return "<p class=meta>no embedding map (run with --embeddings)</p>"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy = (max(xs) - min(xs)) or 1, (max(ys) - min(ys)) or 1
    dots = []
    for i, (x, y) in zip(emb["map"]["index"], pts):
        cx, cy = 10 + (x - min(xs)) / sx * (size - 20), 10 + (y - min(ys)) / sy * (size - 20)
        colour = "#c0392b" if i in flagged else "#2e86c1"
        dots.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}" fill-opacity=".6">'
                    f"<title>{html.escape(where[i]) if i < len(where) else i}</title></circle>")
    return f'<svg width="{size}" height="{size}" style="border:1px solid #ccc">{"".join(dots)}</svg>'


def render_html(report: dict, where: list[str] | None = None) -> str:
    """``where`` names each row (for the map's tooltips); red dots are off-topic rows."""
    where = where or []
    emb = report.get("embeddings") or {}
    scores = (emb.get("relevance") or {}).get("scores") or []
    threshold = (emb.get("relevance") or {}).get("threshold", 0)
    flagged = {i for i, s in enumerate(scores) if s < threshold}
    rows = "".join(
        f"<tr><td>{html.escape(f['severity'])}</td><td>{html.escape(f['code'])}</td><td>{html.escape(f['message'])}</td>"
        f"<td class=num>{f['count']}</td><td><pre>{html.escape(chr(10).join(f['examples']))}</pre></td></tr>"
        for f in report["findings"]) or "<tr><td colspan=5>no problems found</td></tr>"
    t = report["tokens"]
    summary = {k: report.get(k) for k in ("format", "kind", "rows", "rows_read", "skipped", "languages", "pii",
                                            "diversity", "duplicates", "leakage", "size_guidance")}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>strop data check</title><style>{CSS}</style></head>
<body><h1>Data check: {html.escape(report['file'])}</h1>
<p>{report['rows']} rows, format {html.escape(report['format'])}; {report['errors']} errors, {report['warnings']} warnings.
{html.escape(report['size_guidance'])}</p>
<h2>Findings</h2><table><tr><th>severity</th><th>code</th><th>finding</th><th>rows</th><th>examples</th></tr>{rows}</table>
<h2>Token length per conversation</h2>
<p class=meta>min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; red bars pass max_length {t['max_length']}</p>
{_histogram_svg(t['histogram'], t['max_length'])}
<h2>Embedding map (PCA)</h2>{_map_svg(emb, where, flagged)}
<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=1))}</pre>
</body></html>"""
