"""ChronoEdit model code: loading, presets, sizing, running an edit, encoding outputs.

Importing this package (and its torch-free modules `sizing`, `images`) does not import torch, so the
API process can share the size rule and image validation with the workers. The modules that touch the model
(`loading`, `runner`, `tiny`, `encoding`) import torch themselves.
"""
