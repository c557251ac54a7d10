"""extract: every decision the person made, recovered from the final folder.

``stage`` is the thin wrapper (read, call, write); ``pairing`` and ``content_pairing``
tie each final to its group, ``locate`` finds where it lies in its render, and
``decisions`` labels the group approve, crop or reject.
"""

from backfill.stages.extract.stage import ExtractSettings, decisions_line, extract_project, run

__all__ = ["ExtractSettings", "decisions_line", "extract_project", "run"]
