"""Errors a user can cause: each carries one line that says what is wrong and what to do."""


class UsageError(Exception):
    """Bad input from the user (flags, profile, data folder): printed as one line, exit 2."""
