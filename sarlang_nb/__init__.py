"""Notebook-first reproducible companion to the SARLANG-1M benchmark

Modules:

- `sarlang_nb.formats`: The SARLANG-1M release layout (caption CSVs, VQA JSON for LLaMA-Factory), LLaVA conversations, SARDet-100K COCO, and the prediction files of LLaMA-Factory and the authors' evaluation script — read, checked and written."""

__version__ = "0.0.1"
