"""A read layer over job channels for operators: the CLI (``taskpipe status``/``jobs``) and dashboards.

``Inspector(app)`` lists channels, counts jobs per state, pages through the jobs of one state,
shows one job in full, lists live workers, follows a job's log and cleans old finished or
stalled jobs. It never runs ``KEYS`` and never reads a whole collection at once: listings page
(``LRANGE``/``ZRANGE``/``SSCAN`` with limits), so it stays fast with millions of jobs. Key names
come from ``JobChannel.keys``; nothing here builds a key string.

It only reads, except ``clean``, ``pause`` and ``resume``. It never creates a channel: naming one
that does not exist raises ``FeedDoesNotExist`` (``WrongFeedType`` for a non-job object).

Results are plain dataclasses (``JobRow``, ``Page``, ``JobDetail``, ``CleanReport``, ``JobEvent``)
with ``to_dict()`` for JSON; ``jsonable`` and ``safe_text`` make payloads safe to print or serve.
"""

from taskpipe.inspection.inspector import LIST_STATES, MAX_PAGE, Inspector
from taskpipe.inspection.views import (
    CleanReport,
    JobDetail,
    JobEvent,
    JobRow,
    Page,
    jsonable,
    raw_view,
    record_view,
    safe_text,
)

__all__ = [
    "Inspector",
    "LIST_STATES",
    "MAX_PAGE",
    "JobRow",
    "Page",
    "JobDetail",
    "CleanReport",
    "JobEvent",
    "jsonable",
    "safe_text",
    "raw_view",
    "record_view",
]
