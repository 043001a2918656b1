"""Pure domain model: protocol, forms, rules. No Qt, no SQLAlchemy."""
