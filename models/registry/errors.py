"""The registry's errors: ``str(e)`` is one line that says what is wrong and what exists or is accepted."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's errors."""


class InvalidNameError(RegistryError, ValueError):
    pass


class UnknownSpecialistError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateSpecialistError(RegistryError, ValueError):
    pass


class CorruptEntryError(RegistryError, ValueError):
    pass


class ChecksumError(RegistryError, ValueError):
    pass
