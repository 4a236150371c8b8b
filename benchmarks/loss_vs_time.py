"""Held-out loss against steps and wall-clock minutes for several `refusion train --eval-data` runs: a PNG and a Markdown table.

    python3 benchmarks/loss_vs_time.py A/loss.json B/loss.json --labels A B --output loss_vs_time.png > table.md
"""

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("histories", nargs="+", help="loss.json files written by refusion train with --eval-data")
    parser.add_argument("--labels", nargs="+", help="one name per file (default: the file names)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args()
    labels = args.labels or args.histories
    if len(labels) != len(args.histories):
        parser.error("give one label per file")
    runs = {label: json.load(open(path)) for label, path in zip(labels, args.histories)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Against steps (what each run learned) and against minutes (what it cost on the machine it ran on).
    figure, (by_step, axis) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    print("| run | step | minutes | held-out loss | training loss (last logged) |")
    print("|---|---|---|---|---|")
    for label, run in runs.items():
        evaluations = run["eval_history"]
        by_step.plot([e["step"] for e in evaluations], [e["eval_loss"] for e in evaluations], "o-", label=label)
        axis.plot([e["elapsed_seconds"] / 60 for e in evaluations], [e["eval_loss"] for e in evaluations], "o-", label=label)
        for e in evaluations:
            train = [h["loss"] for h in run["history"] if h["step"] <= e["step"]]
            print(f"| {label} | {e['step']} | {e['elapsed_seconds'] / 60:.1f} | {e['eval_loss']:.3f} | "
                  f"{train[-1] if train else float('nan'):.3f} |")
    print()
    print("| run | seconds per step, second half of the run | L_MDM, last logged |")
    print("|---|---|---|")
    for label, run in runs.items():
        timed = [h for h in run["history"] if h.get("elapsed_seconds") is not None]
        half = [h for h in timed if h["step"] >= timed[-1]["step"] / 2] if timed else []
        pace = ((half[-1]["elapsed_seconds"] - half[0]["elapsed_seconds"]) / (half[-1]["step"] - half[0]["step"])
                if len(half) > 1 else float("nan"))
        mdm = [h["loss_mdm"] for h in run["history"] if "loss_mdm" in h]
        print(f"| {label} | {pace:.1f} | {mdm[-1] if mdm else float('nan'):.2f} |")
    by_step.set_xlabel("optimizer step")
    by_step.set_ylabel("held-out loss (L_AR + L_MDM)")
    axis.set_xlabel("wall-clock minutes (one CPU core per run)")
    figure.suptitle("Full fine-tuning against LoRA, same data and steps")
    for panel in (by_step, axis):
        panel.grid(alpha=0.3)
    by_step.legend()
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
