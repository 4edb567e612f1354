"""Self-contained HTML reports (images embedded, works offline) and their figures."""

from usnav.report.html import Report

__all__ = ["Report"]
