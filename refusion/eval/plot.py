"""Accuracy against throughput, one point per (decoder, settings) run, like the paper's Figure 1.

Reads evaluation summaries (the JSON lines `refusion eval --json` prints, or the `summary.json`
of an `--output` directory) and draws one panel per task with a labelled point per run. Knows
nothing about how the numbers were produced.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import RefusionError
from ..files import staged_file
from .runner import SUMMARY_FILE

REQUIRED = ("task", "decoder", "accuracy", "tokens_per_second")


def load_results(paths: list[str | Path]) -> list[dict]:
    """Every summary found in the given files (JSON or JSON lines) and output directories."""
    results: list[dict] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            path = path / SUMMARY_FILE
        if not path.is_file():
            raise RefusionError(f"{raw}: no such results file or eval output directory")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise RefusionError(f"{raw}: not UTF-8 text (byte {error.start})") from None
        found = _summaries(text)
        if not found:
            raise RefusionError(f"{raw}: no evaluation summary in it (expected JSON with {', '.join(REQUIRED)})")
        for summary in found:
            for key in ("accuracy", "tokens_per_second"):
                value = summary[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RefusionError(f"{raw}: {key} must be a finite number, got {value!r}")
        results.extend(found)
    return results


def check_image_path(output: str | Path) -> Path:
    """An image path matplotlib can write (.png, .pdf, .svg, ...) in a folder that exists or can be made."""
    from matplotlib.backend_bases import FigureCanvasBase

    from ..checks import output_dir

    output = Path(output)
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in formats:
        raise RefusionError(f"--output {output}: unknown image type {output.suffix or '(no extension)'!r}; "
                            f"use one of {', '.join('.' + name for name in sorted(formats))}")
    if output.is_dir():
        raise RefusionError(f"--output {output} is a directory, not an image file")
    output_dir(output.parent)
    return output


def _summaries(text: str) -> list[dict]:
    try:
        whole = json.loads(text)
        candidates = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        candidates = []
        for line in text.splitlines():
            try:
                candidates.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # progress or log lines mixed into captured stdout
    return [item for item in candidates if isinstance(item, dict) and all(key in item for key in REQUIRED)]


def settings_label(summary: dict) -> str:
    """'k=8 B=4 τ=0.9/0.4' for a run's knobs; '' for decoders without any."""
    settings = summary.get("settings") or {}
    parts = []
    for key, short in (("slot_size", "k"), ("blocks", "B")):
        if settings.get(key) is not None:
            parts.append(f"{short}={settings[key]}")
    if settings.get("slot_threshold") is not None and settings.get("token_threshold") is not None:
        parts.append(f"τ={settings['slot_threshold']}/{settings['token_threshold']}")
    if settings.get("kv") == "recompute":
        parts.append("kv=recompute")
    return " ".join(parts)


def point_label(summary: dict, with_model: bool) -> str:
    """A point's annotation: the model's name (when several models share a plot), then the knobs."""
    model = Path(str(summary.get("model") or "?")).name if with_model else ""
    return " ".join(part for part in (model, settings_label(summary)) if part)


def plot_results(results: list[dict], output: str | Path, title: str | None = None) -> Path:
    """Draw accuracy (%) against tokens per second, one panel per task, and save it to `output`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise RefusionError("nothing to plot")
    tasks = sorted({summary["task"] for summary in results})
    decoders = sorted({summary["decoder"] for summary in results})
    colors = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(decoders)}
    several_models = len({summary.get("model") for summary in results}) > 1
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        labelled = 0
        for summary in sorted((s for s in results if s["task"] == task), key=lambda s: s["tokens_per_second"]):
            x, y = summary["tokens_per_second"], 100 * summary["accuracy"]
            axis.scatter(x, y, s=60, color=colors[summary["decoder"]], zorder=3)
            # The colour names the decoder (legend); the label adds the model (when several are compared)
            # and the knobs, staggered so that neighbouring points' labels do not print over each other.
            if label := point_label(summary, with_model=several_models):
                axis.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * (labelled % 3)), fontsize=7,
                              color=colors[summary["decoder"]])
                labelled += 1
        axis.set_title(task)
        axis.set_xlabel("throughput (tokens / second)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[name], label=name) for name in decoders]
    columns = min(len(decoders), 3)
    rows = -(-len(decoders) // columns)
    figure.legend(handles=handles, loc="lower center", ncol=columns, frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))
    output = Path(output)
    with staged_file(output) as staging:  # an interruption leaves the old image, not half a new one
        figure.savefig(staging, dpi=150, format=output.suffix.lstrip(".").lower())
    plt.close(figure)
    return output
