"""A multi-GPU worker group: one edit at a time, computed by N ranks together (`python -m worker.group` under
torchrun; `chronoedit worker --gpus N`). See `__main__.py` for the start-up and `leader.py` for the job handling."""
