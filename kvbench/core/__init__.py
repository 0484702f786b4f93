"""Pure arithmetic and facts with no kvbench data type: statistics, serving metrics, units, KV size theory,
devices' names, errors, JSON text."""
