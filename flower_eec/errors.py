"""The project's exception types: each names what went wrong and how to fix it."""


class FlowerEECError(Exception):
    """Base class of every error flower-eec raises on purpose."""


class ConfigError(FlowerEECError, ValueError):
    """A config key is unknown or a value is not allowed."""


class DataError(FlowerEECError):
    """A dataset directory or file is missing, truncated or corrupt."""


class PayloadError(FlowerEECError, ValueError):
    """A message from a device does not hold what its type promises."""


class ProtocolError(FlowerEECError):
    """The devices do not answer a method's messages: their ClientApp lacks its handlers."""
