"""The on-disk layer of sie-index, and nothing else.

One folder per index (:mod:`storage.generations`): the commit pointer
``CURRENT``, the write lock (:mod:`storage.lock`), and one folder per
generation holding ``manifest.json`` (:mod:`storage.manifest`), ``docs.sqlite``
(:mod:`storage.docstore`), ``tokens.f16`` and ``token_doc.i32``
(:mod:`storage.vectors`) and ``tokens.faiss`` (:mod:`storage.token_index`).
:mod:`storage.builder` writes and commits a generation, :mod:`storage.snapshot`
opens one. Its errors are in :mod:`storage.errors`. It knows nothing of models
or HTTP, imports nothing from ``sie_index``, and importing it changes no
process state.
"""
