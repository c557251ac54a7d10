"""The shapes of data: every table's contract, validated table I/O, and the merge
plan's format."""
