"""A run: checks before measuring, the launcher, the one assembler of events into a result, the results file
kept current; and the CI gate."""
