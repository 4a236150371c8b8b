"""Fine-tuning with the ReFusion objective or the AR / masked-diffusion baselines.

data.py reads records, objectives.py builds inputs and losses, collate.py pads batches,
trainer.py runs Hugging Face `Trainer`, cli.py is `refusion train`. Kept import-light: the CLI
imports this package to register its command.
"""
