"""The staged Xception edge compiler: model -> float reference -> int8 PTQ -> artifacts -> manifest.

Python API first (``pipeline.compiler.compile_target``); ``python -m pipeline`` is a thin CLI.
"""
__version__ = "0.1.0"
