"""The one error every layer raises for a problem the user fixes in settings or files."""


class ConfigError(Exception):
    """A problem with the configuration; the message says what to do."""
