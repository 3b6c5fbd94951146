"""variants: images made on request from an image's original

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

One row per (image, normalised spec): the id is derived from both, so asking twice finds the
same row. `image_id` cascades: deleting an image deletes its variant rows (their files lie
under the image's own key prefix, store.keys.variant_prefix).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "variants",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "image_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("images.id", ondelete="CASCADE", name="variants_image_id_fkey"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("media_type", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN ('NEW', 'PROCESSING', 'DONE', 'ERROR')", name="variants_status_valid"
        ),
    )
    op.create_index("ix_variants_image_id_created_at", "variants", ["image_id", "created_at"])
    op.create_index("ix_variants_status_updated_at", "variants", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_table("variants")
