"""The four ordered access levels. A chunk is visible to a reader whose level is >= its own."""

from enum import IntEnum

from workers.core.errors import InvalidInput


class AccessLevel(IntEnum):
    public = 0
    employee_only = 1
    manager_only = 2
    director_only = 3

    @classmethod
    def parse(cls, value: object) -> "AccessLevel":
        """The level named by `value`; an unknown or missing name is an error, never a default."""
        if isinstance(value, str) and value.strip() in cls.__members__:
            return cls[value.strip()]
        raise InvalidInput(f"unknown access level {value!r}: use one of {', '.join(cls.names())}")

    @classmethod
    def names(cls) -> list[str]:
        return [level.name for level in cls]
