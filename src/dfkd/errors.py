"""Errors that are the user's to fix: the CLI prints them as one line, with no traceback."""


class DfkdError(Exception):
    """A user-facing error: a missing file, a bad setting, an unknown name.

    Its text is always one line: a message that quotes a multi-line parser error (YAML)
    or a value with line breaks is folded, so the CLI prints exactly one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class DatasetError(DfkdError):
    """A dataset that is missing, corrupt or in an unexpected format."""


class ConfigError(DfkdError):
    """A configuration key, type or value that is not accepted."""


class CheckpointError(DfkdError):
    """A checkpoint that cannot be read safely or does not fit the model."""
