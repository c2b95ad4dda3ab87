"""bench: ctrpyd against containerd, side by side, on the same machine in the same run.

Run ``scripts/bench`` (or ``.venv/bin/python -m bench``). Every case runs both daemons with the
same stock ``ctr``, the same runc and the same image, alternating A B A B, and reports medians,
min-max and the ratio ctrpyd / containerd; results go to ``bench/results/latest.{json,md}``.
"""
