"""Encoders: texts to multivectors (see :mod:`sie_index.encoders.base` for the protocol)."""
