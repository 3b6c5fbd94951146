"""image placeholder: BlurHash, dominant colour and aspect ratio, written with DONE

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-01

A nullable JSONB column without a default is a catalog-only change in PostgreSQL (no table
rewrite, no long lock). Rows made before it have no placeholder (null in the status JSON); the
worker fills it for every image it finishes from now on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("images", sa.Column("placeholder", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "placeholder")
