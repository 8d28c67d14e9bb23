"""Webhooks: a tenant's endpoints told when a run or an evaluation ends, signed in the Standard Webhooks
style, delivered from an outbox written with the status change (:mod:`app.webhooks.outbox`) by the worker
service's dispatcher (:mod:`app.webhooks.dispatch`)."""
