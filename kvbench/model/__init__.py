"""What kvbench's data is: the settings (each declared once), cells, records of runs and cells, events from
measuring, and the registries of modes and cache implementations."""
