"""Exports: PDF case report forms, ODM XML, CSV. Take plain data, return bytes."""
