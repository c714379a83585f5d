"""Device-side code: runs artifacts with whatever runtimes are installed.

Nothing in this package imports TensorFlow, Keras or the ``pipeline`` package, so ``build/<t>/``
plus ``benchmarks/`` copied to a board is enough to run it.
"""
