"""Integrations with model libraries. Each submodule imports its library lazily and only when imported itself:
``import moekit`` never imports any of them.

* :mod:`moekit.integrations.transformers` - ``patch(model)`` / ``unpatch(model)`` for Hugging Face transformers
  MoE models (extra ``moekit[transformers]``).
"""
