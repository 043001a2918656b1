"""One function per user action; each runs in one transaction with its audit records."""
