"""Shared pieces of the benchmark tools in bench/ (stdlib only, plus matplotlib for plots).

Each module has one job; the tools (batched.py, memory.py, loadgen.py) compose them.
"""
