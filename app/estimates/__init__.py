"""Estimates before launch: corpus analyses (``POST /v1/corpora/{id}/analyze``,
:mod:`app.estimates.analyses`), the estimate of a run (``POST /v1/runs/estimate``) and the ``eta_seconds``
of runs (:mod:`app.estimates.service`), from the throughput that workers measured
(:mod:`app.estimates.throughput`) and the workers that announce themselves (:mod:`app.estimates.workers`).
The arithmetic is the training library's (:mod:`worker.pretraining.estimates`)."""
