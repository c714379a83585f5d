"""Model builders, datasets and preprocessing for the Xception edge compiler.

Nothing here imports TensorFlow at module import time: the heavy imports happen inside the
functions that need them, so the CLI and the device runner stay light.
"""
