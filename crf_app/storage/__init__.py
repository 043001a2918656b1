"""Persistence: SQLAlchemy models, engine, migrations runner, audit writer."""
