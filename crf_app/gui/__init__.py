"""The PySide6 desktop interface. Talks to the services only, never to storage."""
