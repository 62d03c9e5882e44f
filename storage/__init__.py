"""The on-disk layer of sie-index, and nothing else.

One folder per index (:mod:`storage.generations`): the commit pointer
``CURRENT``, the write lock (:mod:`storage.lock`), generation folders holding
``manifest.json`` (:mod:`storage.manifest`) and ``deleted.i64``
(:mod:`storage.deletions`), and immutable segment folders
(:mod:`storage.segment`) holding ``docs.sqlite`` (:mod:`storage.docstore`),
the token vectors, coded as :mod:`storage.codec` says (``tokens.f16``,
``tokens.sq8`` or ``tokens.pq``), and ``token_doc.i32`` (:mod:`storage.vectors`)
and FAISS data (:mod:`storage.token_index`). :mod:`storage.builder` writes a new index,
:mod:`storage.store_writer` changes one in place, :mod:`storage.commit` commits
either, :mod:`storage.snapshot` opens one (:mod:`storage.segmented` reads across
its segments), :mod:`storage.verify` checks one. Its errors are in
:mod:`storage.errors`. It knows nothing of models or HTTP, imports nothing from
``sie_index``, and importing it changes no process state.
"""
