"""Results files matched against each other and judged, and one module per export format."""
