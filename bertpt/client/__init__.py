"""A typed, synchronous Python client of the bertpt REST API (httpx), for scripts and notebooks.

::

    from bertpt.client import Client

    with Client() as client:  # BERTPT_API_URL / BERTPT_API_KEY, else the file `bertpt login` wrote
        corpus = client.corpora.upload("notes.txt")
        run = client.runs.create({"base_model": "minilm-l6-h384-uncased", "corpus_id": corpus.id})
        for event in client.runs.stream(run.id):
            ...
        client.runs.download(run.id, "models/")

Answers are the API's own schemas (``app.<domain>.schemas``); every error is an :class:`ApiError`
carrying the API's ``type``, ``message`` and ``param``. Modules: :mod:`~bertpt.client.client` (the
connection), :mod:`~bertpt.client.resources` and :mod:`~bertpt.client.runs` (the resources),
:mod:`~bertpt.client.stream` (live events that survive a dropped connection),
:mod:`~bertpt.client.downloads` (resumed, verified, safely extracted archives),
:mod:`~bertpt.client.uploads`, :mod:`~bertpt.client.config`, :mod:`~bertpt.client.webhooks`.
"""

from bertpt.client.client import Client, Retries
from bertpt.client.config import ClientConfig
from bertpt.client.downloads import Download
from bertpt.client.errors import ApiError
from bertpt.client.stream import StreamEvent
from bertpt.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError",
    "Client",
    "ClientConfig",
    "Download",
    "Retries",
    "StreamEvent",
    "WebhookVerificationError",
    "verify_webhook",
]
