"""`python -m kvbench` and the `kvbench` command: the command line, loaded inside a guard. Loading it takes a
moment (Typer, rich, the commands), and a Ctrl-C, or a cancelled CI job's SIGTERM, that lands there ends in
one line and exit code 130, as it does once a command runs; an address space too small to load it
(`ulimit -v`) in one line and exit code 2. This module imports nothing else before the guard."""

from __future__ import annotations

import sys

# kvbench.cli.app's codes, written here: the command line is what is being loaded when they are needed.
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


def main() -> None:
    try:
        # Imported now, while there is memory: after a MemoryError, importing it could fail too.
        from kvbench.core.limits import out_of_memory
        from kvbench.runner.interrupts import terminate_as_interrupt

        # From the first moment, SIGTERM stops kvbench as Ctrl-C does.
        with terminate_as_interrupt():
            try:
                from kvbench.cli import main as run_command

                run_command()
            except (MemoryError, ImportError) as error:
                reason = out_of_memory(error)
                if reason is None:
                    raise
                sys.stderr.write(f"Error: {reason}\n")
                raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:  # a command's own ends inside it: this one came while loading or parsing
        sys.stderr.write("Interrupted while kvbench was starting; nothing was done.\n")
        raise SystemExit(EXIT_INTERRUPTED) from None


# Guarded: the memory sampler's spawned process imports this module again, and must not run the CLI.
if __name__ == "__main__":
    main()
