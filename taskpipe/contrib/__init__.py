"""Optional add-ons that need extra packages: Prometheus metrics and the web dashboard.

- ``taskpipe.contrib.metrics``: ``serve_metrics(app, port, worker=None)`` exposes Prometheus
  metrics (``pip install 'taskpipe[metrics]'``).
- ``taskpipe.contrib.dashboard``: ``taskpipe dashboard -A module:app`` serves a small web UI
  (standard library only; its ``/metrics`` page needs the ``metrics`` extra).

Nothing here is imported by the core package.
"""

__all__: list[str] = []
