"""Writing a bench result: a Markdown table, the JSON, the outputs, and a speed-against-quality figure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..files import staged_file, write_text
from ..hardware import cpu_name


def machine(device: torch.device, dtype: torch.dtype, threads: int) -> dict:
    """What the numbers were measured on."""
    import transformers

    described = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "device": str(device),
                 "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
                 "transformers": transformers.__version__}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def _ms_by_width(row: dict) -> str:
    return " ".join(f"{w}:{ms:g}" for w, ms in row["forward_ms_by_width"].items())


def _batches(result: dict) -> str:
    sizes = result["batch_sizes"]
    return f"batch {sizes[0]}" if len(sizes) == 1 else f"batch sizes {', '.join(map(str, sizes))}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "") + f", {m['dtype']}; torch {m['torch']}, transformers {m['transformers']}.",
        f"Model: {result['model']}; {len(result['prompts'])} prompts, at most {result['max_new_tokens']} new tokens, {_batches(result)}"
        + (f", {result['passes']} passes (speeds over all of them)" if result.get("passes", 1) > 1 else "") + ".",
        "",
        "| decoder | batch | lossless | tokens/s | vs ar (same batch) | latency ms (mean / p95) | tokens/forward | forwards "
        "| drafts accepted/forward | ms/forward by tokens fed | engine overhead | peak MB | identical to ar "
        "| logit gap where it leaves ar (median / max) | AR log-lik/token |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        drafts = row.get("drafts_accepted_per_forward")
        drafts = "-" if drafts is None else f"{drafts:.2f}"
        parts = [f"{row[f'{source}_accepted_per_forward']:.2f} {source}" for source in ("lookup", "table")
                 if row.get(f"{source}_accepted_per_forward")]
        if parts:
            drafts += f" ({', '.join(parts)})"
        loglik = row["ar_loglik_per_token"]
        gap = row.get("divergence_logit_gap")
        gap = "-" if gap is None else f"{gap['median']:.3f} / {gap['max']:.3f}"
        latency = f"{row['latency_ms']['mean']:.0f} / {row['latency_ms']['p95']:.0f}"
        lines.append(
            f"| {row['label']} | {row['batch_size']} | {'yes' if row['lossless'] else 'no'} | {row['tokens_per_second']:.2f} "
            f"| {row['speedup_vs_ar']:.2f}x | {latency} "
            f"| {row['tokens_per_forward']:.2f} | {row['forward_passes']:.1f} | {drafts} "
            f"| {_ms_by_width(row)} | {100 * row['engine_overhead']:.1f}% | {row['peak_memory_mb']:.0f} "
            f"| {100 * row['identical_to_ar']:.0f}% | {gap} "
            f"| {'-' if loglik is None else f'{loglik:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Speed against ar at the same batch size (x) and AR log-likelihood per token (y), one labelled point per row
    (labelled with its batch size when the run had several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    rows = [row for row in result["rows"] if row["ar_loglik_per_token"] is not None]
    several = len(result["batch_sizes"]) > 1
    for index, row in enumerate(sorted(rows, key=lambda r: r["speedup_vs_ar"])):
        marker = "o" if row["lossless"] else "s"
        point = (row["speedup_vs_ar"], row["ar_loglik_per_token"])
        axes.scatter(*point, marker=marker, s=50)
        # Labels alternate above and below their point, so that neighbours do not overwrite each other.
        name = f"{row['label']} b{row['batch_size']}" if several else row["label"]
        axes.annotate(name, point, fontsize=7, xytext=(4, 6 if index % 2 == 0 else -12),
                      textcoords="offset points")
    axes.margins(x=0.25, y=0.12)
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("tokens/s relative to ar (same run, same batch size)")
    axes.set_ylabel("AR log-likelihood per generated token")
    m = result["machine"]
    axes.set_title(f"{result['model']}: speed vs quality ({m['device']}, {m['dtype']}, circles = lossless)", fontsize=9)
    figure.tight_layout()
    with staged_file(path) as staging:
        figure.savefig(staging, dpi=120, format="png")
    plt.close(figure)
    return path


def write(result: dict, directory: str | Path) -> list[Path]:
    """bench.md, bench.json, outputs.jsonl (each row's text per prompt) and bench.png, written atomically."""
    directory = Path(directory)
    outputs = result["outputs"]
    files = {
        "bench.md": markdown(result),
        "bench.json": json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=1) + "\n",
        "outputs.jsonl": "".join(json.dumps({"prompt": prompt, **{label: texts[i] for label, texts in outputs.items()}}) + "\n"
                                 for i, prompt in enumerate(result["prompts"])),
    }
    written = [write_text(directory / name, text) for name, text in files.items()]
    written.append(plot(result, directory / "bench.png"))
    return written
