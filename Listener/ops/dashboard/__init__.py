"""A read-only job dashboard on the HTTP endpoints: ``/``, ``/jobs/<id>``, ``/api/…`` and ``/assets/…``.

Rendered on the server (the static parts need no scripts); a small script updates the counts, the chart
(uPlot, shipped in ``assets/``) and the job list while the page is open. See docs/dashboard.md.
"""

from .access import Access, is_loopback_host
from .app import Dashboard
from .source import DashboardSource

__all__ = ["Access", "Dashboard", "DashboardSource", "is_loopback_host"]
