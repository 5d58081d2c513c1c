"""The ``report`` stage's page: the whole run (curation funnel, examples of every decision,
traceability, training, evaluation, experiments) as one self-contained HTML folder."""

from pipeline.report.page import build_report

__all__ = ["build_report"]
