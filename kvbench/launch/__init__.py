"""Where cells are measured: in this process, in fresh worker processes, or as Ray tasks; every launcher yields
the same typed events."""
