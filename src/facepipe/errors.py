"""User-facing errors: each names the file, line, key or offset at fault and what was expected."""


class FacepipeError(Exception):
    """An error the user can act on. The CLI prints it without a traceback and exits 2."""


class ConfigError(FacepipeError):
    """A bad config key or value (unknown name, wrong type, out of range)."""


class DataError(FacepipeError):
    """Bad input data: a corrupt record, a malformed label line, an inconsistent dataset."""

    def __init__(self, message: str, path=None, line: int | None = None, offset: int | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        self.path, self.line, self.offset = path, line, offset
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class StorageError(FacepipeError):
    """An object-store or filesystem transfer that failed after retries, or missing credentials."""
