"""`refusion train`: the command-line face of `refusion.training.trainer.train`.

Only argument parsing lives here; heavy imports wait until the command runs.
"""

from __future__ import annotations

import argparse

from ..errors import RefusionError

EPILOG = """examples:
  refusion train --model smollm2-135m-instruct --data train.jsonl --output runs/refusion --max-steps 2000 --lr 1e-4
  refusion train --model DIR --data a.jsonl b.json --objective mdm --output runs/mdm --epochs 2 --lora-rank 8
  refusion train ... --resume                      # continue from the last checkpoint in --output
  refusion train --model refusion-smollm2-135m --continue-adapter --prefix-share 0.8 --draft-horizon 8 ...
                                                   # train the shipped adapter further, for the lossless decoder's drafts
  accelerate launch --multi_gpu --num_processes 2 -m refusion train ...   # data-parallel; CPU DDP without a GPU
"""


def parse_slot_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 4,8,16,32, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"slot sizes must be positive integers, got {text!r}")
    return sizes


def parse_lora_targets(text: str) -> list[str] | str:
    if text.strip() == "all-linear":
        return "all-linear"
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected module names like q_proj,v_proj or all-linear, got {text!r}")
    return names


def train_command(args: argparse.Namespace) -> None:
    """Fine-tune a causal LM into a ReFusion model (or an AR / masked-diffusion baseline)."""
    from .trainer import TrainConfig, train

    if args.epochs is not None and args.max_steps is not None:
        raise RefusionError("give either --max-steps or --epochs, not both")
    for option, value in (("--slot-sizes", args.slot_sizes), ("--mdm-weight", args.mdm_weight),
                          ("--prefix-share", args.prefix_share), ("--ar-across-slots", args.ar_across_slots or None),
                          ("--draft-horizon", args.draft_horizon), ("--next-token-share", args.next_token_share)):
        if value is not None and args.objective != "refusion":
            raise RefusionError(f"{option} applies to --objective refusion only, not {args.objective}")
    if args.eval_every is not None and not args.eval_data:
        raise RefusionError("--eval-every needs --eval-data")
    if args.pad_responses_to is not None and args.objective != "mdm":
        raise RefusionError(f"--pad-responses-to applies to --objective mdm only, not {args.objective}")
    config = TrainConfig(
        model=args.model, data=args.data, output=args.output, objective=args.objective, max_steps=args.max_steps,
        epochs=args.epochs if args.epochs is not None else 1.0, lr=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_length=args.max_length, lora_rank=args.lora_rank, lora_targets=args.lora_targets,
        continue_adapter=args.continue_adapter, draft_horizon=args.draft_horizon, precision=args.precision,
        slot_sizes=args.slot_sizes or (4, 8, 16, 32), mdm_weight=1.0 if args.mdm_weight is None else args.mdm_weight,
        prefix_share=args.prefix_share or 0.0, ar_across_slots=args.ar_across_slots,
        next_token_share=args.next_token_share or 0.0,
        pad_responses_to=args.pad_responses_to, seed=args.seed, resume=args.resume, save_every=args.save_every,
        log_every=args.log_every, warmup_ratio=args.warmup_ratio, eval_data=args.eval_data, eval_every=args.eval_every,
    )
    summary = train(config)
    if "final_loss" in summary:
        held_out = summary.get("final_eval_loss")  # None when it was not finite
        held_out = f", held-out loss {held_out:.4g}" if held_out is not None else ""
        print(f"saved to {summary['output']} (final loss {summary['final_loss']}{held_out}; history in loss.json, loss.png); "
              f"load it with: refusion generate \"...\" --model {summary['output']}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model with the ReFusion objective (or AR / MDM baselines)",
                                   description=train_command.__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base model: directory, built-in name (smollm2-135m-instruct) or hub id")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help='JSON or JSONL files of {"query", "response"} or {"messages": [...]} records')
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="where the trained model goes; `refusion generate --model DIR` loads it")
    parser.add_argument("--objective", choices=["refusion", "ar", "mdm"], default="refusion",
                        help="refusion: hybrid AR + masked diffusion over slots (default); ar: next-token fine-tuning; "
                             "mdm: LLaDA-style masked diffusion with bidirectional attention")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, default=None, help="number of optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1)")
    parser.add_argument("--eval-data", nargs="+", metavar="FILE", default=None,
                        help="held-out files of the same format: the objective's loss on them (same masks every time) "
                             "is logged every --eval-every steps and drawn in loss.png")
    parser.add_argument("--eval-every", type=int, default=None, metavar="N",
                        help="steps between held-out evaluations (default: --save-every)")
    parser.add_argument("--lr", type=float, default=2e-5, help="peak learning rate, cosine schedule (default 2e-5)")
    parser.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of steps for linear warm-up (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per device per step (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    parser.add_argument("--max-length", type=int, default=4096,
                        help="skip examples longer than this many tokens, prompt included (default 4096)")
    parser.add_argument("--lora-rank", type=int, default=None, metavar="R",
                        help="train a LoRA adapter of rank R (plus the mask token's rows) instead of all weights")
    parser.add_argument("--lora-targets", type=parse_lora_targets, default=None, metavar="NAME,NAME,...|all-linear",
                        help="the linear layers LoRA adapts, by module name (default q_proj,k_proj,v_proj,o_proj); "
                             "all-linear adapts every linear layer except the output head (needs --lora-rank)")
    parser.add_argument("--continue-adapter", action="store_true",
                        help="--model is a LoRA output directory (or refusion-smollm2-135m): train that adapter further, "
                             "with its rank and layers, instead of merging it; the output is an adapter over the same base")
    parser.add_argument("--slot-sizes", type=parse_slot_sizes, default=None, metavar="K,K,...",
                        help="refusion objective: slot sizes drawn uniformly per example (default 4,8,16,32)")
    parser.add_argument("--mdm-weight", type=float, default=None, metavar="LAMBDA",
                        help="refusion objective: loss = L_AR + LAMBDA * L_MDM (default 1)")
    parser.add_argument("--prefix-share", type=float, default=None, metavar="Q",
                        help="refusion objective: the share of examples laid out as left-to-right decoding sees them "
                             "(a clean prefix of slots in order, then a masked tail), which keeps next-token skill across "
                             "slot boundaries and trains the drafts the lossless decoder reads (default 0: the paper's recipe)")
    parser.add_argument("--ar-across-slots", action="store_true",
                        help="refusion objective: a clean slot's last token also learns to predict the next slot's first "
                             "token when that token is hidden from it (the paper's recipe leaves it unlabelled)")
    parser.add_argument("--draft-horizon", type=int, default=None, metavar="H",
                        help="refusion objective with --prefix-share: a prefix-layout example keeps only the first H tokens "
                             "of its masked tail and leaves the rest of the response out; the lossless decoder reads drafts "
                             "only a few tokens ahead, and shorter inputs train faster (default: the whole tail)")
    parser.add_argument("--next-token-share", type=float, default=None, metavar="Q",
                        help="refusion objective: the share of examples trained as plain next-token examples over the whole "
                             "response, without masks. The other layouts rarely give the end of an answer (masked most "
                             "often) a next-token label, and converted models lose AR skill there (default 0: the paper's recipe)")
    parser.add_argument("--pad-responses-to", type=int, default=None, metavar="N",
                        help="mdm objective: responses are always padded with EOS to the batch's longest (loss on the "
                             "padding, as in LLaDA's SFT, so the model learns where to stop); this pads them to at least "
                             "N tokens, e.g. the --max-new-tokens you will decode with")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="float32, or bf16 mixed precision; auto (default) = bf16 where the hardware computes it natively "
                             "(a GPU with bf16, a CPU with AVX512-BF16 or AMX)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    parser.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (default 200)")
    parser.add_argument("--log-every", type=int, default=10, help="log the loss every N steps (default 10)")
    parser.set_defaults(func=train_command)
