"""form instances and item values (assessment CRF data)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 22:55:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import crf_app.storage.models

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('form_instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('visit_id', sa.Integer(), nullable=False),
    sa.Column('form_id', sa.String(length=40), nullable=False),
    sa.Column('form_version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('updated_at', crf_app.storage.models.UTCDateTime(), nullable=True),
    sa.Column('updated_by', sa.String(length=64), nullable=True),
    sa.Column('row_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['visit_id'], ['visit.id'], name=op.f('fk_form_instance_visit_id_visit')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_form_instance')),
    sa.UniqueConstraint('visit_id', 'form_id', name=op.f('uq_form_instance_visit_id'))
    )
    with op.batch_alter_table('form_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_form_instance_visit_id'), ['visit_id'], unique=False)

    op.create_table('item_value',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('form_instance_id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.String(length=40), nullable=False),
    sa.Column('row_index', sa.Integer(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['form_instance_id'], ['form_instance.id'], name=op.f('fk_item_value_form_instance_id_form_instance')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_item_value')),
    sa.UniqueConstraint('form_instance_id', 'item_id', 'row_index', name=op.f('uq_item_value_form_instance_id'))
    )
    with op.batch_alter_table('item_value', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_item_value_form_instance_id'), ['form_instance_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('item_value', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_item_value_form_instance_id'))

    op.drop_table('item_value')
    with op.batch_alter_table('form_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_form_instance_visit_id'))

    op.drop_table('form_instance')
