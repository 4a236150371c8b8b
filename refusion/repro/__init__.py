"""The paper's comparison (ARM vs MDM vs ReFusion) reproduced in miniature, on a CPU, from scratch.

`arithmetic` and `records` generate the two synthetic task families, `tokenizer` builds a small BPE
tokenizer from their training text, `pipeline` trains the models (ARM, MDM, ReFusion, and ReFusion
fine-tuned from ARM) with `refusion.training` and evaluates them with `refusion.eval`, and `report`
writes the table and plot. `refusion repro` (`cli`) runs it all.
"""
