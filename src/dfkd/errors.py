"""Errors that are the user's to fix: the CLI prints them as one line, with no traceback."""


class DfkdError(Exception):
    """A user-facing error: a missing file, a bad setting, an unknown name."""


class DatasetError(DfkdError):
    """A dataset that is missing, corrupt or in an unexpected format."""


class ConfigError(DfkdError):
    """A configuration key, type or value that is not accepted."""


class CheckpointError(DfkdError):
    """A checkpoint that cannot be read safely or does not fit the model."""
