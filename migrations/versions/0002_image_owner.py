"""image owner: the token subject that uploaded it

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Rows from before have no owner (NULL): in AUTH_MODE=jwt only admins see them.
Adding a nullable column without a default is a catalog-only change in PostgreSQL (no rewrite);
the index is built CONCURRENTLY so uploads are not blocked on a large table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("images", sa.Column("owner", sa.String(255), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_images_owner_created_at_id",
            "images",
            ["owner", "created_at", "id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_images_owner_created_at_id", "images", postgresql_concurrently=True, if_exists=True
        )
    op.drop_column("images", "owner")
