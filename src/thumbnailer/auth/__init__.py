"""Who is asking: bearer-token validation and the principal a request acts as."""

from thumbnailer.auth.principal import ADMIN_SCOPE, Principal
from thumbnailer.auth.tokens import (
    AuthUnavailable,
    InvalidToken,
    JwksCache,
    TokenVerifier,
    issue_token,
)

__all__ = [
    "ADMIN_SCOPE",
    "AuthUnavailable",
    "InvalidToken",
    "JwksCache",
    "Principal",
    "TokenVerifier",
    "issue_token",
]
