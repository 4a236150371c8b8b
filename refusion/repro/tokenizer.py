"""A small BPE tokenizer built from the training text with the `tokenizers` library.

Byte-level BPE with every digit its own token (arithmetic stays learnable for a tiny model), the
chat specials `<|im_start|>` / `<|im_end|>` (EOS), a pad token and `<|mask|>`, saved as an ordinary
`PreTrainedTokenizerFast` with a ChatML chat template, so `AutoTokenizer.from_pretrained` and
`refusion.load` read it like any other. Knows nothing about models or tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..special_tokens import MASK_TOKEN

PAD, BOS_TURN, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = [PAD, BOS_TURN, EOS, MASK_TOKEN]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train byte-level BPE (digits split) on `texts` -> PreTrainedTokenizerFast with chat template and mask token.

    >>> tokenizer = build_tokenizer(["Tom has 12 apples. 12 + 5 = 17."] * 20, vocab_size=300)
    >>> tokenizer.tokenize("127")
    ['1', '2', '7']
    >>> tokenizer.eos_token, tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids("<|mask|>"))
    ('<|im_end|>', '<|mask|>')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS,
                                        additional_special_tokens=[BOS_TURN, MASK_TOKEN])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
