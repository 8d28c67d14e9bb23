"""The web dashboard: a page served by the API at ``/ui/`` that works only through the REST API, with the
user's API key (see ``app/ui/static/`` and the README's "Dashboard" section)."""
