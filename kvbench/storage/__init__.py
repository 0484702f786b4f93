"""The results file: the document written, its reader and validation, the lock. It writes what it is given and
knows nothing of analysis."""
