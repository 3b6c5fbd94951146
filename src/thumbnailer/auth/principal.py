"""The principal a request acts as, and what it may see."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN_SCOPE = "images:admin"


@dataclass(frozen=True)
class Principal:
    """`subject` owns what it uploads; `admin` sees every image, including ownerless old rows.

    In AUTH_MODE=none every request is the anonymous operator: no subject, sees everything.
    """

    subject: str | None
    admin: bool

    @classmethod
    def operator(cls) -> Principal:
        return cls(subject=None, admin=True)

    def can_see(self, owner: str | None) -> bool:
        return self.admin or (self.subject is not None and owner == self.subject)

    @property
    def owner_filter(self) -> str | None:
        """The owner a listing is limited to; None lists every row."""
        return None if self.admin else self.subject
