"""Results on a terminal and in figures, and live progress: reads results and analysis, never measures."""
