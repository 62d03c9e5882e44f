"""The on-disk layer of sie-index, and nothing else.

One folder per index: ``manifest.json`` (:mod:`storage.manifest`), ``docs.sqlite``
(:mod:`storage.docstore`), ``tokens.f16`` and ``token_doc.i32``
(:mod:`storage.vectors`), ``tokens.faiss`` (:mod:`storage.token_index`), the
write lock (:mod:`storage.lock`), and the build and open protocol that ties
them together (:mod:`storage.store`). It knows nothing of models or HTTP.
"""
