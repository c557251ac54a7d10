"""`backfill review`: the local web app where the person settles every doubtful case.

``store`` keeps the answers (``reviews/<project>.jsonl``, in git beside conf/), ``queue``
lists what waits for the person, ``app`` serves both. Kept light: the extract stage will
read the answers through ``store`` without loading the web server.
"""
