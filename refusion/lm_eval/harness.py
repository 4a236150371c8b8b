"""The `refusion` model class for lm-evaluation-harness (batch size 1, one request at a time).

Knows lm-eval's request types and nothing about tasks: generation goes through
`refusion.generate` with the decoder settings given as model_args; log-likelihoods are read from
one causal forward of context + continuation (the AR head, as any causal LM).
"""

from __future__ import annotations

import logging

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from ..errors import RefusionError

log = logging.getLogger(__name__)

def decoder_knobs() -> tuple[str, ...]:
    """Every decoder option any decoder declares (refusion.decoding.options): the model_args it takes."""
    from ..decoding.dispatch import DECODERS
    from ..decoding.options import all_options

    return tuple(all_options(DECODERS))


@register_model("refusion")
class RefusionLM(LM):
    def __init__(self, pretrained: str = "smollm2-135m-instruct", decoder: str | None = None,
                 max_new_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int | str | None = 1,
                 model=None, tokenizer=None, **knobs) -> None:
        super().__init__()
        from .. import load
        from ..cli import precheck_decoder_options, resolve_decoder

        unknown = sorted(set(knobs) - set(decoder_knobs()))
        if unknown:
            raise RefusionError(f"refusion model_args do not include {', '.join(unknown)}; "
                                f"decoder knobs are: {', '.join(decoder_knobs())}")
        # Every value checked before the model loads, with the messages `refusion generate` gives.
        options = {"decoder": decoder, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, **knobs}
        precheck_decoder_options(options)
        max_new_tokens, temperature, seed = options["max_new_tokens"], options["temperature"], options["seed"]
        knobs = {name: options[name] for name in knobs}
        if batch_size not in (None, 1, "1", "auto"):
            log.warning("refusion decodes one request at a time; batch_size=%s runs as 1", batch_size)
        if model is None:
            if device and str(device).startswith("cuda") and not torch.cuda.is_available():
                log.warning("device %s asked for, but torch sees no CUDA GPU: running on the CPU", device)
                device = "cpu"
            model, tokenizer = load(pretrained, dtype=dtype, device=device)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = str(pretrained)
        self.decoder = resolve_decoder(decoder, model)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, float(temperature), seed
        self.knobs = {name: value for name, value in knobs.items() if value is not None}
        self.chat_applied = False
        self.speed = {"new_tokens": 0, "forward_passes": 0, "seconds": 0.0}
        """Running totals over generate_until requests: TPS and TPF for the whole run."""

    # --- chat template ---------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", self.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.chat_applied = True
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        # A chat-templated string already holds its special tokens.
        return self.tokenizer(text, add_special_tokens=not self.chat_applied)["input_ids"]

    # --- generation ------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from ..decoding import generate

        outputs = []
        for request in tqdm(requests, desc="refusion generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs)
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            budget = self.max_new_tokens or int(gen_kwargs.pop("max_gen_toks", 256))
            gen_kwargs.pop("max_gen_toks", None)
            temperature = self.temperature
            if gen_kwargs.pop("do_sample", False) or gen_kwargs.get("temperature"):
                temperature = float(gen_kwargs.get("temperature") or self.temperature or 1.0)
            gen_kwargs.pop("temperature", None)
            if gen_kwargs:
                log.warning("refusion ignores generation kwargs %s", sorted(gen_kwargs))
            ids = torch.tensor([self._encode(context)])  # [1, P]
            result = generate(self.model, self.tokenizer, ids, decoder=self.decoder, max_new_tokens=budget,
                              temperature=temperature, seed=self.seed, stop=[s for s in until if s], **self.knobs)
            for key in self.speed:
                self.speed[key] += getattr(result, key) if key != "new_tokens" else result.new_tokens
            text = result.text  # decoding ended at the first `until` string, cut before it
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    # --- log-likelihoods (autoregressive head) ---------------------------------------------------

    def _prefix_token(self) -> int:
        for token in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id):
            if token is not None:
                return int(token)
        raise RefusionError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")

    @torch.no_grad()
    def _continuation_logprob(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) and whether greedy decoding would produce it."""
        ids = torch.tensor([context + continuation], device=self.model.device)  # [1, C + N]
        logits = self.model(input_ids=ids, use_cache=False).logits[0, len(context) - 1: -1].float()  # [N, V]
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(continuation, device=logprobs.device)
        total = logprobs.gather(1, target[:, None]).sum().item()
        return total, bool((logprobs.argmax(-1) == target).all())

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenise context + continuation together, so tokens at the seam merge as they would in text."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        head = self._encode(context) if context else []
        if not head:
            return [self._prefix_token()], whole
        return whole[: len(head)], whole[len(head):]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        limit = self._context_limit()
        for request in tqdm(requests, desc="refusion loglikelihood", disable=disable_tqdm):
            context, continuation = self._split(*request.args)
            if len(context) + len(continuation) > limit:  # keep the most recent context that fits
                context = (context + continuation)[-limit:][: -len(continuation)] or [self._prefix_token()]
            result = self._continuation_logprob(context, continuation)
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        results = []
        for request in tqdm(requests, desc="refusion loglikelihood_rolling", disable=disable_tqdm):
            tokens = self._encode(request.args[0])
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=tokens, prefix_token=self._prefix_token(), max_seq_len=self._context_limit(), context_len=1))
            total = sum(self._continuation_logprob(list(context), list(target))[0] for context, target in windows)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return results

    def _context_limit(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", None) or 2048)
