"""The one error for a problem the user fixes: a setting, a path, a file, the disk, a
cluster that went away, a query. Every layer raises it; the command prints its message
as one line (`backfill: error: ...`) and exits 2. What the data breaks (a table that
fails its contract, a DB that cannot be used) has errors of its own and exits 1."""


class UserError(Exception):
    """A problem the user fixes; the message says what is wrong and what to do."""
