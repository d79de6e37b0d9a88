"""Where resgrad plugs into other tools: :mod:`~resgrad.integrations.tensorboard` (event files).

Each integration's third-party package is an optional extra, imported when first used.
"""
