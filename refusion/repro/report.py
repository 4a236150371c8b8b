"""The report of a miniature reproduction: results.json, results.md and the accuracy-vs-speed plot.

Takes the run summaries `refusion.repro.pipeline.run` returns and writes the table (accuracy,
tokens/s, tokens/forward, forward passes per problem), the paper's two goals checked for every
ReFusion setting, and the command that re-measures each row. Knows only which model was converted from which.
"""

from __future__ import annotations

import json
from pathlib import Path

from .pipeline import FINE_TUNED_FROM, TRAINED_LONGER

LABELS = {"arm": "ARM", "arm-longer": "ARM trained longer", "mdm": "MDM", "refusion": "ReFusion",
          "refusion-from-arm": "ReFusion from ARM",
          "refusion-from-arm-across": "ReFusion from ARM, AR across slots",
          "refusion-from-arm-prefix": "ReFusion from ARM, prefix layout",
          "refusion-from-arm-prefix-across": "ReFusion from ARM, prefix layout + AR across slots",
          "refusion-from-arm-prefix-only": "ReFusion from ARM, prefix layout only",
          "refusion-from-arm-longer": "ReFusion from ARM trained longer",
          "refusion-from-arm-longer-prefix-across": "ReFusion from ARM trained longer, prefix layout + AR across slots",
          "refusion-from-arm-longer-prefix-only": "ReFusion from ARM trained longer, prefix layout only",
          "refusion-from-arm-longer-prefix-across-lambda0.25": "ReFusion from ARM trained longer, prefix layout + AR across "
                                                               "slots, L_MDM weight 0.25",
          "refusion-from-arm-longer-prefix-across-next0.5": "ReFusion from ARM trained longer, prefix layout + AR across "
                                                            "slots, half the examples next-token"}
LABELS.update({name: f"{LABELS[conversion]}, {multiple}x the steps" for name, (conversion, multiple) in TRAINED_LONGER.items()})
ARM_POINTS = 2.0
"""Goal 1: ReFusion within this many accuracy points of its ARM (the AR model it was converted from; from scratch,
ARM), at >= ARM_SPEEDUP x its tokens/s."""
ARM_SPEEDUP = 2.0
MDM_SPEEDUP = 5.0
"""Goal 2: ReFusion above MDM's accuracy at >= MDM_SPEEDUP x its tokens/s."""


def option_flags(options: dict) -> str:
    return " ".join(f"--{name.replace('_', '-')} {value}" for name, value in options.items())


def eval_command(output: Path, row: dict, limit: int, max_new_tokens: int, dtype: str | None = None) -> str:
    """The `refusion eval` command for a row, on one CPU thread like the pipeline's measurements."""
    flags = option_flags(row["options"])
    return (f"OMP_NUM_THREADS=1 refusion eval --model {output / row['model']} --task {row['task']} --decoder {row['decoder']}"
            f"{' ' + flags if flags else ''} --max-new-tokens {max_new_tokens} --limit {limit}"
            f"{f' --dtype {dtype}' if dtype else ''} --json")


def table_rows(summaries: list[dict], output: Path, limit: int, max_new_tokens: int, dtype: str | None = None) -> list[dict]:
    keep = ("task", "model", "objective", "decoder", "run", "options", "accuracy", "correct", "samples",
            "tokens_per_second", "tokens_per_forward", "forward_passes", "new_tokens")
    return [{**{key: row[key] for key in keep}, "command": eval_command(output, row, limit, max_new_tokens, dtype)}
            for row in summaries]


CHECKED_DECODERS = ("refusion", "lossless")
"""The decoders of a ReFusion model whose rows are checked against the paper's goals (plan-and-infill, lossless)."""


def its_arm(model: str) -> str:
    """The AR model a ReFusion model is held against: the one it was converted from; from scratch, ARM."""
    return FINE_TUNED_FROM.get(model, "arm")


def _ar_row(rows: list[dict], model: str) -> dict | None:
    return next((row for row in rows if row["model"] == model and row["decoder"] == "ar"), None)


def conversion_checks(rows: list[dict]) -> list[dict]:
    """For each task and converted model: its own `ar` decoding against the AR model it was converted from (does
    the conversion keep the AR skill? within ARM_POINTS) and, converted from ARM, against ARM trained on as AR for
    the same steps (the control: what the extra training alone gives)."""
    checks = []
    for task in sorted({row["task"] for row in rows}):
        of_task = [row for row in rows if row["task"] == task]
        longer = _ar_row(of_task, "arm-longer")
        for row in of_task:
            if row["objective"] != "refusion" or row["model"] not in FINE_TUNED_FROM or row["decoder"] != "ar":
                continue
            start = _ar_row(of_task, its_arm(row["model"]))
            if start:
                points = round(100 * (row["accuracy"] - start["accuracy"]), 2)
                check = {"task": task, "model": LABELS[row["model"]], "converted_from": LABELS[start["model"]],
                         "points_vs_start": points, "kept": points >= -ARM_POINTS}
                if longer and start["model"] == "arm":
                    check["points_vs_arm_longer"] = round(100 * (row["accuracy"] - longer["accuracy"]), 2)
                checks.append(check)
    return checks


def goal_checks(rows: list[dict]) -> list[dict]:
    """For each task and ReFusion plan-and-infill or lossless run: the two goals against its ARM (ar) and MDM (mdm)."""
    checks = []
    for task in sorted({row["task"] for row in rows}):
        of_task = [row for row in rows if row["task"] == task]
        mdm = next((r for r in of_task if r["model"] == "mdm" and r["decoder"] == "mdm"), None)
        for row in (r for r in of_task if r["objective"] == "refusion" and r["decoder"] in CHECKED_DECODERS):
            arm = _ar_row(of_task, its_arm(row["model"]))
            # Every model here has ARM's shape, so its own `ar` costs what ARM's does; run minutes before this row in
            # the same pass, it drifts far less against it than ARM's run, which may be from another day.
            pace = _ar_row(of_task, row["model"]) or arm
            check = {"task": task, "run": f"{LABELS[row['model']]} {row['run']}"}
            if arm and pace["tokens_per_second"]:
                check["points_vs_arm"] = round(100 * (row["accuracy"] - arm["accuracy"]), 2)
                check["speedup_vs_arm"] = round(row["tokens_per_second"] / pace["tokens_per_second"], 2)
                check["arm_goal"] = check["points_vs_arm"] >= -ARM_POINTS and check["speedup_vs_arm"] >= ARM_SPEEDUP
            if mdm and mdm["tokens_per_second"]:
                check["points_vs_mdm"] = round(100 * (row["accuracy"] - mdm["accuracy"]), 2)
                check["speedup_vs_mdm"] = round(row["tokens_per_second"] / mdm["tokens_per_second"], 2)
                check["mdm_goal"] = check["points_vs_mdm"] > 0 and check["speedup_vs_mdm"] >= MDM_SPEEDUP
            checks.append(check)
    return checks


def _settings(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "-"


def markdown(rows: list[dict], checks: list[dict], meta: dict, kept: list[dict] | None = None) -> str:
    lines = ["# ReFusion in miniature: ARM vs MDM vs ReFusion", "",
             f"Produced by `{meta['command']}` ({meta['description']}).", "",
             "| task | model | decoder | settings | accuracy | tokens/s | tokens/forward | forwards/problem |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['task']} | {LABELS[row['model']]} | {row['decoder']} | {_settings(row)} | "
                     f"{100 * row['accuracy']:.1f}% ({row['correct']}/{row['samples']}) | {row['tokens_per_second']:.1f} | "
                     f"{row['tokens_per_forward']:.2f} | {row['forward_passes']:.1f} |")
    lines += ["", "![accuracy against tokens per second](accuracy_vs_speed.png)", "",
              "## The paper's goals, checked per ReFusion setting", "",
              f"ARM goal: within {ARM_POINTS:g} points of its ARM (ar; the AR model it was converted from, from scratch ARM) "
              f"at >= {ARM_SPEEDUP:g}x its tokens/s. Every model has ARM's shape, so ARM's tokens/s is read from the "
              "same model's `ar` row where it has one (run beside it, so less skewed by the machine's load), else ARM's. "
              f"MDM goal: above MDM (mdm) at >= {MDM_SPEEDUP:g}x its tokens/s.", "",
              "| task | ReFusion run | points vs its ARM | speed vs its ARM | ARM goal | points vs MDM | speed vs MDM | MDM goal |",
              "|---|---|---|---|---|---|---|---|"]
    mark = {True: "met", False: "missed", None: "n/a"}

    def speed(value):
        return "n/a" if value is None else f"{value}x"

    for check in checks:
        lines.append(f"| {check['task']} | {check['run']} | {check.get('points_vs_arm', 'n/a')} | "
                     f"{speed(check.get('speedup_vs_arm'))} | {mark[check.get('arm_goal')]} | "
                     f"{check.get('points_vs_mdm', 'n/a')} | {speed(check.get('speedup_vs_mdm'))} | {mark[check.get('mdm_goal')]} |")
    if kept:
        lines += ["", "## Does the conversion keep the AR skill?", "",
                  f"Each converted model, decoded with `ar`, against the AR model it was converted from: kept when within "
                  f"{ARM_POINTS:g} points. The last column compares a conversion of ARM with ARM trained on as AR for the "
                  "same steps (ARM trained longer): what the extra training alone gives.", "",
                  "| task | model | converted from | points vs it | kept | points vs ARM trained longer |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {check['task']} | {check['model']} | {check['converted_from']} | {check['points_vs_start']} | "
                  f"{'yes' if check['kept'] else 'no'} | {check.get('points_vs_arm_longer', 'n/a')} |" for check in kept]
    lines += ["", "## Re-measuring a row", "", "```"] + [row["command"] for row in rows] + ["```", ""]
    return "\n".join(lines)


def write_report(summaries: list[dict], output: Path, meta: dict, limit: int, max_new_tokens: int,
                 notes: str | None = None) -> dict[str, Path]:
    """results.json, results.md (with `notes` appended when given) and accuracy_vs_speed.png in `output`."""
    from ..eval.plot import plot_results

    rows = table_rows(summaries, output, limit, max_new_tokens, meta.get("dtype"))
    checks, kept = goal_checks(rows), conversion_checks(rows)
    paths = {"json": output / "results.json", "markdown": output / "results.md", "plot": output / "accuracy_vs_speed.png"}
    paths["json"].write_text(json.dumps({**meta, "rows": rows, "goals": checks, "conversion": kept}, indent=2) + "\n")
    text = markdown(rows, checks, meta, kept)
    paths["markdown"].write_text(text + (f"\n{notes.strip()}\n" if notes else ""))
    points = [{**row, "decoder": f"{LABELS[row['model']]} {row['decoder']}", "settings": row["options"]} for row in rows]
    plot_results(points, paths["plot"], title="ReFusion in miniature: accuracy against throughput (CPU, batch 1)")
    return paths
