"""bertpt's client side: :mod:`bertpt.client` (a typed Python client of the REST API) and
:mod:`bertpt.cli` (the ``bertpt`` client commands built on it: login, corpora, runs, evaluations...).

Neither imports torch, transformers or numpy: a notebook or a laptop that only talks to a bertpt service
loads them in a fraction of a second.
"""
