"""The comparison report: one self-contained HTML page (inline CSS and SVG, no scripts, nothing from a network).

`render_report` reads only the leaderboard (the dict that `compare` writes as leaderboard.json): each entry carries
its score with the bootstrap CI, its costs, its loss curve, its per-class (or per-slice) results (a RAG entry also
its citation figures in `extra`) and the leaderboard holds a sample of test examples where strategies disagree.
`recommend` is the plain-language verdict.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22", "#393b79", "#637939")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
     padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9rem} .note{color:#666;font-size:.85rem}
table{border-collapse:collapse;font-size:.88rem;margin:.6rem 0} th,td{padding:.3rem .6rem;border-bottom:1px solid #eee;
     text-align:left;vertical-align:top} th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#eef7ee;font-weight:600} tr.failed td{color:#a33}
.recommendation{background:#f3f7fc;border-left:4px solid #1f77b4;padding:.8rem 1rem;margin:1rem 0}
svg{background:#fff;border:1px solid #eee;display:block;margin:.6rem 0} svg text{font-size:11px;fill:#333}
.flag{color:#a33;font-weight:600} .err{font-family:monospace;font-size:.8rem;white-space:pre-wrap}
"""


def entry_name(entry: Mapping[str, Any], *, with_model: bool = True) -> str:
    """`strategy` or `strategy (model)`: how an entry is named in tables and plots."""
    return f"{entry['strategy']} ({entry['model']})" if with_model else str(entry["strategy"])


def several_models(leaderboard: Mapping[str, Any]) -> bool:
    """Whether the entries use more than one base model (then names carry the model)."""
    return len({e.get("model") for e in leaderboard.get("entries", [])}) > 1


def total_seconds(entry: Mapping[str, Any]) -> float:
    """What an entry cost: training seconds plus the seconds it took to answer the test examples."""
    train = float(entry.get("train_seconds") or 0.0)
    infer = float(entry.get("seconds_per_example") or 0.0) * int(entry.get("examples") or 0)
    return train + infer


def ok_entries(leaderboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entries that finished with a finite score."""
    return [e for e in leaderboard.get("entries", [])
            if e.get("status") == "ok" and isinstance(e.get("score"), (int, float)) and math.isfinite(e["score"])]


def pick_best(entries: Sequence[Mapping[str, Any]], *, higher_is_better: bool = True) -> Mapping[str, Any] | None:
    """The entry with the best score; ties go to the cheaper one."""
    if not entries:
        return None
    sign = 1.0 if higher_is_better else -1.0
    return min(entries, key=lambda e: (-sign * float(e["score"]), total_seconds(e)))


def within_ci(entry: Mapping[str, Any], best: Mapping[str, Any], *, higher_is_better: bool = True) -> bool:
    """Whether `entry`'s score lies inside the best entry's 95% confidence interval."""
    low, high = best.get("ci") or (best["score"], best["score"])
    return (entry["score"] >= low) if higher_is_better else (entry["score"] <= high)


def recommend(leaderboard: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict: the best entry, and the cheapest entry whose score lies within the best's CI (when cheaper)."""
    higher = leaderboard.get("higher_is_better", True)
    entries = ok_entries(leaderboard)
    best = pick_best(entries, higher_is_better=higher)
    metric = str(leaderboard.get("metric", "score"))
    if best is None:
        return {"best": None, "cheaper": None, "text": "No strategy finished, so there is nothing to recommend; "
                "see the errors in the table."}
    several_models = len({e["model"] for e in entries}) > 1
    cheaper = [e for e in entries if e is not best and within_ci(e, best, higher_is_better=higher)
               and total_seconds(e) < total_seconds(best)]
    choice = min(cheaper, key=total_seconds) if cheaper else None
    low, high = best.get("ci") or (best["score"], best["score"])
    text = (f"Best: {entry_name(best, with_model=several_models)} on {best['model']}, {metric} "
            f"{best['score']:.3f} (95% CI {low:.3f}-{high:.3f}), at {format_seconds(total_seconds(best))} of training and "
            f"answering.")
    if choice is not None:
        text += (f" {entry_name(choice, with_model=several_models)} scores {choice['score']:.3f}, inside that "
                 f"interval, and costs {format_seconds(total_seconds(choice))}: on this test set the two cannot be "
                 f"told apart, so pick it when cost matters.")
    else:
        text += " No cheaper strategy scores within its confidence interval."
    tied = [entry_name(e, with_model=several_models) for e in entries
            if e is not best and e is not choice and within_ci(e, best, higher_is_better=higher)]
    if tied:
        text += (f" Also within the interval, so not measurably worse on this test set, but costlier: "
                 f"{', '.join(tied)}.")
    flagged = [entry_name(e) for e in entries if (e.get("retention") or {}).get("flagged")]
    if flagged:
        text += " Forgetting: " + ", ".join(flagged) + " got worse on general text by more than the margin."
    return {"best": {"model": best["model"], "strategy": best["strategy"]},
            "cheaper": None if choice is None else {"model": choice["model"], "strategy": choice["strategy"]},
            "text": text}


def render_report(leaderboard: Mapping[str, Any]) -> str:
    """The whole report as one HTML page."""
    task = str(leaderboard.get("task", "task"))
    metric = str(leaderboard.get("metric", "score"))
    verdict = leaderboard.get("recommendation") or recommend(leaderboard)
    meta = (f"metric {metric} on the {leaderboard.get('split', 'test')} split ({leaderboard.get('examples', '?')} "
            f"examples), seed {leaderboard.get('seed', 0)}" + (", quick settings" if leaderboard.get("quick") else ""))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(task)}: tailorlm comparison</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(task)}</h1>", f'<p class="meta">{_e(meta)}</p>',
        f'<div class="recommendation" id="recommendation"><strong>Recommendation.</strong> {_e(verdict["text"])}</div>',
        "<h2>Leaderboard</h2>", leaderboard_table(leaderboard),
        "<h2>Quality versus cost</h2>",
        '<p class="note">Each point is one specialist; bars are the 95% bootstrap confidence interval; cost is '
        "training plus answering the test split, in seconds.</p>", quality_cost_plot(leaderboard),
        "<h2>Training loss</h2>", loss_plot(leaderboard),
        "<h2>Per-class results</h2>" if leaderboard.get("answer") == "label" else "<h2>Per-slice results</h2>",
        per_class_section(leaderboard),
        *(["<h2>Citations</h2>", citations_table(leaderboard)] if _cited(leaderboard) else []),
        "<h2>Where strategies disagree</h2>", disagreements_table(leaderboard),
        "</body></html>",
    ]
    return "\n".join(parts)


def leaderboard_table(leaderboard: Mapping[str, Any]) -> str:
    """The leaderboard: one row per base model and strategy, best first, failures last with their error."""
    best = (leaderboard.get("recommendation") or recommend(leaderboard)).get("best") or {}
    higher = leaderboard.get("higher_is_better", True)
    finished = sorted(ok_entries(leaderboard), key=lambda e: -e["score"] if higher else e["score"])
    failed = [e for e in leaderboard.get("entries", []) if e not in finished]
    head = ("strategy", "base model", f"{leaderboard.get('metric', 'score')} (95% CI)", "scoring", "training time",
            "trainable parameters", "peak memory", "latency / example", "disk size", "forgetting")
    rows = ["<table id=\"leaderboard\"><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for e in finished:
        low, high = e.get("ci") or (e["score"], e["score"])
        is_best = best.get("model") == e["model"] and best.get("strategy") == e["strategy"]
        retention = e.get("retention") or {}
        forgot = ("—" if not retention else "check failed" if "change" not in retention else
                  f'<span class="flag">yes ({retention["change"]:+.1%})</span>' if retention.get("flagged")
                  else f"no ({retention['change']:+.1%})")
        cells = [_e(e["strategy"]), _e(e["model"]), f"{e['score']:.3f} ({low:.3f}–{high:.3f})", _e(e.get("scoring", "")),
                 format_seconds(e.get("train_seconds")), format_count(e.get("trainable_parameters")),
                 format_megabytes(e.get("peak_memory_mb")), format_latency(e.get("seconds_per_example")),
                 format_megabytes(e.get("disk_mb")), forgot]
        rows.append(f'<tr class="{"best" if is_best else ""}">' + "".join(
            f'<td class="num">{c}</td>' if i >= 2 else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    for e in failed:
        rows.append(f'<tr class="failed"><td>{_e(e["strategy"])}</td><td>{_e(e["model"])}</td>'
                    f'<td colspan="8">failed: <span class="err">{_e(e.get("error") or "no score")}</span></td></tr>')
    rows.append("</tbody></table>")
    return "\n".join(rows)


def citations_table(leaderboard: Mapping[str, Any]) -> str:
    """How the entries that answer from documents cite them: shares of the test examples."""
    head = ("strategy", "base model", "answers citing a source", "citing the right document", "right document retrieved")
    rows = ['<table id="citations"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for e in _cited(leaderboard):
        extra = e["extra"]
        shares = [extra.get(k) for k in ("citation_rate", "citation_accuracy", "retrieval_hit")]
        rows.append(f"<tr><td>{_e(e['strategy'])}</td><td>{_e(e['model'])}</td>" + "".join(
            f'<td class="num">{"—" if v is None else f"{v:.1%}"}</td>' for v in shares) + "</tr>")
    rows.append("</tbody></table>")
    rows.append('<p class="note">An answer that cites nothing counts as not citing the right document; without '
                "eval.citation_doc the right document is unknown (—).</p>")
    for e in _cited(leaderboard):
        missing, examples = e["extra"].get("gold_not_indexed"), e["extra"].get("gold_not_indexed_examples") or []
        if missing:
            rows.append(f'<p class="note flag">{_e(e["strategy"])}: {missing} of {e.get("examples", "?")} right-document '
                        f"ids are not in the index (such as {_e(', '.join(map(repr, examples)))}), so neither share can "
                        "reach 100%; check that eval.citation_doc spells the corpus's document ids.</p>")
    return "\n".join(rows)


def _cited(leaderboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The finished entries whose evaluation measured citations (RAG specialists)."""
    return [e for e in ok_entries(leaderboard) if "citation_rate" in (e.get("extra") or {})]


def quality_cost_plot(leaderboard: Mapping[str, Any], *, width: int = 720, height: int = 380) -> str:
    """Scatter of score against training + inference seconds (log scale when costs span a wide range), CI bars."""
    entries = ok_entries(leaderboard)
    svg = _svg_open("plot-quality-cost", width, height, "Quality versus cost")
    if not entries:
        return svg + _empty(width, height, "no finished strategy") + "</svg>"
    box = _Box(width, height)
    costs = [max(total_seconds(e), 1e-3) for e in entries]
    lows = [(e.get("ci") or (e["score"],) * 2)[0] for e in entries]
    highs = [(e.get("ci") or (e["score"],) * 2)[1] for e in entries]
    log_x = max(costs) / min(costs) > 20
    xs = [math.log10(c) for c in costs] if log_x else costs
    x_lo, x_hi = _pad(min(xs), max(xs), zero=not log_x)
    y_lo, y_hi = _pad(min(lows), max(highs))
    out = [svg, box.axes(x_lo, x_hi, y_lo, y_hi, x_label="seconds (training + answering)" + (", log scale" if log_x else ""),
                         y_label=str(leaderboard.get("metric", "score")), log_x=log_x)]
    colors = _model_colors(entries)
    for e, x, low, high in zip(entries, xs, lows, highs):
        px, py = box.x(x, x_lo, x_hi), box.y(e["score"], y_lo, y_hi)
        y1, y2 = box.y(low, y_lo, y_hi), box.y(high, y_lo, y_hi)
        color = colors[e["model"]]
        out.append(f'<line x1="{px:.1f}" y1="{y1:.1f}" x2="{px:.1f}" y2="{y2:.1f}" stroke="{color}" stroke-width="1.5"/>')
        for yy in (y1, y2):
            out.append(f'<line x1="{px - 4:.1f}" y1="{yy:.1f}" x2="{px + 4:.1f}" y2="{yy:.1f}" stroke="{color}"/>')
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5" fill="{color}"><title>{_e(entry_name(e))}: '
                   f'{e["score"]:.3f}, {format_seconds(total_seconds(e))}</title></circle>')
        out.append(f'<text x="{px + 7:.1f}" y="{py - 6:.1f}">{_e(e["strategy"])}</text>')
    out.append(_legend(colors, width))
    return "\n".join(out) + "</svg>"


def loss_plot(leaderboard: Mapping[str, Any], *, width: int = 720, height: int = 340) -> str:
    """Training loss against step for every trained entry (from its run's metrics.jsonl)."""
    named = several_models(leaderboard)
    curves = [(entry_name(e, with_model=named), [(float(s), float(v)) for s, v in e["loss_curve"] if math.isfinite(float(v))])
              for e in leaderboard.get("entries", []) if e.get("loss_curve")]
    curves = [(name, points) for name, points in curves if points]
    svg = _svg_open("plot-loss", width, height, "Training loss")
    if not curves:
        return svg + _empty(width, height, "no strategy trained (prompting and RAG have no loss curve)") + "</svg>"
    box = _Box(width, height)
    steps = [s for _, pts in curves for s, _ in pts]
    losses = [v for _, pts in curves for _, v in pts]
    x_lo, x_hi = _pad(min(steps), max(steps), zero=True)
    y_lo, y_hi = _pad(min(losses), max(losses))
    out = [svg, box.axes(x_lo, x_hi, y_lo, y_hi, x_label="optimizer step", y_label="training loss")]
    colors = {name: PALETTE[i % len(PALETTE)] for i, (name, _) in enumerate(curves)}
    for name, points in curves:
        path = " ".join(f"{box.x(s, x_lo, x_hi):.1f},{box.y(v, y_lo, y_hi):.1f}" for s, v in points)
        out.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="1.8" points="{path}">'
                   f"<title>{_e(name)}</title></polyline>")
    out.append(_legend(colors, width))
    return "\n".join(out) + "</svg>"


def per_class_section(leaderboard: Mapping[str, Any], *, width: int = 720, height: int = 320) -> str:
    """Per-class F1 (label tasks) or per-slice mean score: a table (id per-class) and a grouped bar plot."""
    entries = [e for e in ok_entries(leaderboard) if e.get("per_class")]
    if not entries:
        return ('<table id="per-class"><tbody><tr><td>no per-class results</td></tr></tbody></table>'
                + _svg_open("plot-per-class", width, 60, "Per class") + _empty(width, 60, "nothing to plot") + "</svg>")
    label = leaderboard.get("answer") == "label"
    groups = list(dict.fromkeys(g for e in entries for g in e["per_class"]))
    value_key = "f1" if label else "score"
    head = "".join(f"<th>{_e(g)}</th>" for g in groups)
    rows = [f'<table id="per-class"><thead><tr><th>strategy</th><th>base model</th>{head}</tr></thead><tbody>']
    for e in entries:
        cells = []
        for g in groups:
            stats = e["per_class"].get(g)
            cells.append("<td class=\"num\">—</td>" if not stats else
                         f'<td class="num">{stats[value_key]:.3f} <span class="note">(n={stats.get("support", 0)})</span></td>')
        rows.append(f"<tr><td>{_e(e['strategy'])}</td><td>{_e(e['model'])}</td>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    note = "F1 of each class" if label else "mean per-example score of each slice"
    rows.append(f'<p class="note">{_e(note)}.</p>')
    # grouped bars: one group per class, one bar per entry
    svg = _svg_open("plot-per-class", width, height, "Per class")
    box = _Box(width, height)
    out = [svg, box.axes(0, len(groups), 0.0, 1.0, x_label="", y_label=value_key, x_ticks=False)]
    slot = (box.right - box.left) / len(groups)
    bar = slot * 0.8 / len(entries)
    named = several_models(leaderboard)
    colors = {entry_name(e, with_model=named): PALETTE[i % len(PALETTE)] for i, e in enumerate(entries)}
    for gi, g in enumerate(groups):
        x0 = box.left + gi * slot + slot * 0.1
        out.append(f'<text x="{box.left + (gi + 0.5) * slot:.1f}" y="{box.bottom + 16}" text-anchor="middle">{_e(g)}</text>')
        for ei, e in enumerate(entries):
            value = float((e["per_class"].get(g) or {}).get(value_key, 0.0))
            top = box.y(max(0.0, min(1.0, value)), 0.0, 1.0)
            out.append(f'<rect x="{x0 + ei * bar:.1f}" y="{top:.1f}" width="{max(bar - 1, 1):.1f}" '
                       f'height="{max(box.bottom - top, 0.5):.1f}" fill="{colors[entry_name(e, with_model=named)]}">'
                       f"<title>{_e(entry_name(e))}, {_e(g)}: {value:.3f}</title></rect>")
    out.append(_legend(colors, width))
    return "\n".join(rows) + "\n" + "\n".join(out) + "</svg>"


def disagreements_table(leaderboard: Mapping[str, Any]) -> str:
    """Test examples where the strategies' answers differ, with the reference."""
    sample = leaderboard.get("disagreements") or []
    if not sample:
        return '<table id="disagreements"><tbody><tr><td>the strategies agree on every example compared</td></tr></tbody></table>'
    names = list(dict.fromkeys(n for d in sample for n in d.get("predictions", {})))
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = [f'<table id="disagreements"><thead><tr><th>input</th><th>reference</th>{head}</tr></thead><tbody>']
    for d in sample:
        text = str(d.get("input", ""))
        text = text if len(text) <= 300 else text[:300] + "…"
        reference = d.get("reference")
        reference = " | ".join(map(str, reference)) if isinstance(reference, list) else str(reference)
        cells = "".join(f"<td>{_e(_short(d['predictions'].get(n, '')))}</td>" for n in names)
        rows.append(f"<tr><td>{_e(text)}</td><td>{_e(reference)}</td>{cells}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def per_class_results(predictions: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None) -> dict[str, dict]:
    """Label tasks: precision, recall, F1 and support of each label word; other tasks: mean score per input-length
    slice (the shortest, middle and longest third of the test inputs).

    >>> per_class_results([{"reference": "1", "prediction": "bullish"}], {"0": "bearish", "1": "bullish"})["bullish"]["f1"]
    1.0
    """
    if labels:
        words = dict(labels)
        pairs = [(label_word(_reference(p), words), label_word(p.get("prediction"), words)) for p in predictions]
        result = {}
        for word in words.values():
            tp = sum(1 for r, q in pairs if r == word and q == word)
            predicted = sum(1 for _, q in pairs if q == word)
            support = sum(1 for r, _ in pairs if r == word)
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            result[word] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        return result
    scored = [(len(str(p.get("input", ""))), float(p["score"])) for p in predictions
              if isinstance(p.get("score"), (int, float))]
    if len(scored) < 3:
        return {}
    scored.sort(key=lambda item: item[0])
    third = len(scored) / 3
    slices = {"short inputs": scored[:round(third)], "medium inputs": scored[round(third):round(2 * third)],
              "long inputs": scored[round(2 * third):]}
    return {name: {"score": sum(s for _, s in rows) / len(rows), "support": len(rows)}
            for name, rows in slices.items() if rows}


def find_disagreements(predictions: Mapping[str, Sequence[Mapping[str, Any]]], labels: Mapping[str, str] | None, *,
                       limit: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """A fixed random sample of test examples on which the named prediction lists do not all give the same answer."""
    import random

    words = dict(labels or {})
    by_id: dict[str, dict[str, Any]] = {}
    for name, rows in predictions.items():
        for row in rows:
            item = by_id.setdefault(str(row.get("id")), {"id": str(row.get("id")), "input": row.get("input", ""),
                                                         "reference": _reference(row), "predictions": {}})
            answer = row.get("prediction")
            item["predictions"][name] = label_word(answer, words) if words else ("" if answer is None else str(answer))
    differing = [item for item in by_id.values()
                 if len(item["predictions"]) > 1 and len({_norm(v) for v in item["predictions"].values()}) > 1]
    for item in differing:
        if words:
            item["reference"] = label_word(item["reference"], words)
    random.Random(seed).shuffle(differing)
    return sorted(differing[:limit], key=lambda item: item["id"])


def label_word(answer: Any, labels: Mapping[str, str]) -> str | None:
    """The label word of an answer given as a label value or a word (None stays None)."""
    if answer is None:
        return None
    text = str(answer)
    if text in labels:
        return labels[text]
    lowered = {w.lower(): w for w in labels.values()}
    return lowered.get(text.strip().lower(), text)


def _reference(row: Mapping[str, Any]) -> Any:
    refs = row.get("references", row.get("reference"))
    if isinstance(refs, list):
        return refs[0] if len(refs) == 1 else refs
    return refs


def _norm(value: Any) -> str:
    return " ".join(str(value).lower().split())


class _Box:
    """The plotting area of an SVG and the mapping from data to pixels."""

    def __init__(self, width: int, height: int) -> None:
        self.left, self.right, self.top, self.bottom = 64, width - 190, 30, height - 44

    def x(self, value: float, lo: float, hi: float) -> float:
        return self.left + (value - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: float, lo: float, hi: float) -> float:
        return self.bottom - (value - lo) / (hi - lo) * (self.bottom - self.top)

    def axes(self, x_lo: float, x_hi: float, y_lo: float, y_hi: float, *, x_label: str, y_label: str,
             log_x: bool = False, x_ticks: bool = True) -> str:
        out = [f'<line x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}" stroke="#555"/>',
               f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.bottom}" stroke="#555"/>']
        for i in range(5):
            value = y_lo + (y_hi - y_lo) * i / 4
            yy = self.y(value, y_lo, y_hi)
            out.append(f'<line x1="{self.left}" y1="{yy:.1f}" x2="{self.right}" y2="{yy:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{self.left - 6}" y="{yy + 4:.1f}" text-anchor="end">{value:.3g}</text>')
        if x_ticks:
            for i in range(5):
                value = x_lo + (x_hi - x_lo) * i / 4
                xx = self.x(value, x_lo, x_hi)
                shown = 10 ** value if log_x else value
                out.append(f'<text x="{xx:.1f}" y="{self.bottom + 16}" text-anchor="middle">{shown:.3g}</text>')
        out.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.bottom + 34}" text-anchor="middle">'
                   f"{_e(x_label)}</text>")
        out.append(f'<text x="14" y="{(self.top + self.bottom) / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {(self.top + self.bottom) / 2:.1f})">{_e(y_label)}</text>')
        return "\n".join(out)


def _svg_open(ident: str, width: int, height: int, title: str) -> str:
    return (f'<svg id="{ident}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>')


def _empty(width: int, height: int, message: str) -> str:
    return f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{_e(message)}</text>'


def _legend(colors: Mapping[str, str], width: int) -> str:
    out = []
    for i, (name, color) in enumerate(colors.items()):
        y = 34 + i * 16
        out.append(f'<rect x="{width - 180}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{width - 165}" y="{y}">{_e(_short(name, 26))}</text>')
    return "\n".join(out)


def _model_colors(entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    models = list(dict.fromkeys(e["model"] for e in entries))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def _pad(lo: float, hi: float, *, zero: bool = False) -> tuple[float, float]:
    """A range around [lo, hi] with a margin, never empty; from 0 when `zero` and all values are positive."""
    if zero and lo >= 0:
        lo = 0.0
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
        return lo - span, hi + span
    return lo - 0.05 * span * (not (zero and lo == 0)), hi + 0.08 * span


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(text: Any, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def format_seconds(value: Any) -> str:
    if value is None:
        return "—"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:.1f} h"


def format_latency(value: Any) -> str:
    return "—" if value is None else f"{float(value) * 1000:.0f} ms"


def format_count(value: Any) -> str:
    if not value:
        return "0"
    value = int(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def format_megabytes(value: Any) -> str:
    if value is None:
        return "—"
    value = float(value)
    return f"{value / 1024:.2f} GB" if value >= 1024 else f"{value:.1f} MB" if value >= 1 else f"{value * 1024:.0f} kB"

