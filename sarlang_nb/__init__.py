"""Notebook-first reproducible companion to the SARLANG-1M benchmark"""

__version__ = "0.0.1"
