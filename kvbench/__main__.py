from kvbench.cli import main

# Guarded: the memory sampler's spawned process imports this module again, and must not run the CLI.
if __name__ == "__main__":
    main()
